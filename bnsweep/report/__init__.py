"""Reports on a sweep: ``plan`` (before it runs: sizes, counts, LR curves, cost) and ``status`` (while or
after it runs)."""
