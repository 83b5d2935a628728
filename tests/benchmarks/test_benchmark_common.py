"""Benchmark plumbing that every timing depends on."""

import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the thresholds are glibc's")
def test_a_script_restarts_itself_with_the_steady_allocator(tmp_path):
    script = tmp_path / "timing.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(BENCHMARKS)!r})
        from common import STEADY_ALLOCATOR, rerun_with_steady_allocator
        print("started", flush=True)
        rerun_with_steady_allocator()
        print(sys.argv[1:], [os.environ.get(name) for name in STEADY_ALLOCATOR])
    """))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, str(script), "--quick"], env=environment, check=True,
                            capture_output=True, text=True)
    # Started twice (the second time with the variables), arguments kept.
    assert result.stdout.splitlines() == ["started", "started",
                                          f"['--quick'] {[str(32 << 20), str(1 << 30)]}"]

    # A threshold the caller chose is kept, and then the script is not restarted.
    environment["MALLOC_MMAP_THRESHOLD_"] = "65536"
    environment["MALLOC_TRIM_THRESHOLD_"] = "65536"
    result = subprocess.run([sys.executable, str(script)], env=environment, check=True,
                            capture_output=True, text=True)
    assert result.stdout.splitlines() == ["started", "[] ['65536', '65536']"]
