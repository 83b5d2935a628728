"""Test-session settings shared by every test file.

Tests run torch and BLAS on one thread: the suite's layers are small, and on a
shared 2-core machine a second intra-op thread made small convolutions up to 100x
slower (and a 320x960 SVD 10-100x slower) while other work ran. Benchmarks set
their own thread counts.

Hypothesis profiles: "default" (random examples, hypothesis's deadline) for local runs,
and "ci" (derandomized, so a CI run is repeatable; no deadline, as CI machines differ in
speed and load), chosen with the environment variable HYPOTHESIS_PROFILE (`.ci/run` sets it).
"""

import os

import torch
from hypothesis import settings
from threadpoolctl import threadpool_limits

torch.set_num_threads(1)
# Kept for the whole session: numpy may already have loaded its BLAS, so environment
# variables would come too late.
_BLAS_LIMIT = threadpool_limits(limits=1)

settings.register_profile("ci", derandomize=True, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
