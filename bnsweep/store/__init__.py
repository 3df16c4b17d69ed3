"""The store layer: the run directory (layout, lock, metadata), the replicate records, the results and
history tables and their column documentation, and W&B tracking."""
