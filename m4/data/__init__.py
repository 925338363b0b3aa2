"""m4's data: sources of raw samples, transforms, masking, grain pipelines."""
