"""The spec layer: YAML → a validated sweep spec; the trial config; the LR-schedule math (NumPy only).

Pure Python: importing it never loads Keras, TensorFlow, JAX, Ray or Optuna (tests/test_layers.py).
"""
