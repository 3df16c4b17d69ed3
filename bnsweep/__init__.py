"""bnsweep: hyperparameter sweeps for "Training BatchNorm and Only BatchNorm" (Frankle et al., 2021).

Ray Tune schedules trials, Optuna searches, each trial trains a Keras 3 CIFAR ResNet under a freezing
regime, and the results land in one tidy table. See README.md.
"""

from __future__ import annotations

__version__ = "0.1.0"
