"""Image transforms, datasets and data pipelines."""
