"""The bottom layer: standard-library helpers every other layer may use (atomic writes, signals,
text formatting, provenance). Imports nothing from bnsweep above it and no third-party library."""
