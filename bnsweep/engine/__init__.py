"""The engine layer: one training run on Keras 3 — the CIFAR ResNets, freezing regimes, fast BN kernels,
data, optimizers, backend set-up, one trial, fused replicates. Never imports Ray (tests/test_layers.py)."""
