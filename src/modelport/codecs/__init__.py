"""Wire formats: each module turns one format into tensors and back, and nothing else."""
