"""The host's arithmetic peak (`peak.py`): the clock read from what the machine reports, and
ops per cycle x clock x threads per data type."""

from __future__ import annotations

import os

import pytest

from qcompiler.backends.tvm.peak import OPS_PER_CYCLE, clock_ghz, peak

XEON = "model name\t: Intel(R) Xeon(R) Processor\ncpu MHz\t\t: 2600.000\n"
ZEN3 = "model name\t: AMD EPYC 7B13 64-Core Processor\ncpu MHz\t\t: 2450.000\n"
NAMED = "model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\ncpu MHz\t\t: 1000.000\n"


@pytest.mark.parametrize(("cpuinfo", "max_khz", "ghz"), [
    (XEON, "", 2.6), (ZEN3, "3500000\n", 3.5), (NAMED, "", 2.5), ("", "", None)])
def test_clock_is_the_highest_reported_frequency(cpuinfo, max_khz, ghz):
    assert clock_ghz(cpuinfo, max_khz) == ghz


def test_peak_is_ops_per_cycle_times_clock_times_threads():
    threads = min(2, os.cpu_count() or 1)
    result = peak("vnni", threads, ghz=3.0)
    assert result.int8_gops == 256 * 3.0 * threads and result.float32_gops == 64 * 3.0 * threads
    assert result.of("int8") == result.int8_gops and result.of("float32") == result.float32_gops
    assert peak("avx2", 1, ghz=2.0).int8_gops == 128  # vpmaddubsw + vpmaddwd: 32 MAC a cycle
    assert peak("avx2", 10**6, ghz=1.0).threads == (os.cpu_count() or 1)  # never beyond the cores
    assert set(OPS_PER_CYCLE) == {"vnni", "avx512", "avx2", "dotprod", "neon"}


def test_a_level_without_a_known_peak_says_so():
    unknown = peak("generic", 1, ghz=2.0)
    assert unknown.int8_gops is None and unknown.of("int8") is None
    assert unknown.describe() == "no peak known for SIMD level generic"
