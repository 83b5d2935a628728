"""Test-session settings shared by every test file.

Tests run torch and BLAS on one thread: the suite's layers are small, and on a
shared 2-core machine a second intra-op thread made small convolutions up to 100x
slower while other work ran. Benchmarks set their own thread counts.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the thread variables, which BLAS reads at load)

torch.set_num_threads(1)
