"""The sweep layer: the driver (launch/resume), Ray start-up, crash recovery, the Optuna search space
and searcher, the Ray Tune trainable, the live monitor, the packing of trials onto machines, and the
one module (``ray_compat``) that touches Ray's and Optuna's internals."""
