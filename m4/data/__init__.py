"""Data: sources, aligned transforms, masking and grain pipelines."""
