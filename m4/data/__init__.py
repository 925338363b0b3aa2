"""Data: sources, aligned transforms, masking, grain pipelines."""
