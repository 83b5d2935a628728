"""Test-session settings shared by every test file.

Tests run torch and BLAS on one thread: the suite's layers are small, and on a
shared 2-core machine a second intra-op thread made small convolutions up to 100x
slower (and a 320x960 SVD 10-100x slower) while other work ran. Benchmarks set
their own thread counts.
"""

import torch
from threadpoolctl import threadpool_limits

torch.set_num_threads(1)
# Kept for the whole session: numpy may already have loaded its BLAS, so environment
# variables would come too late.
_BLAS_LIMIT = threadpool_limits(limits=1)
