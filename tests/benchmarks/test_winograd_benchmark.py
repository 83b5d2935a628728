"""The Winograd benchmark's quick mode (no TVM) runs and its numbers hold what the guide says:
exact integer Winograd with wide intermediates, 8-bit Winograd-domain rounding far worse for
F(4x4) than F(2x2), and the bits the transformed int8 input needs."""

import json


def test_quick_mode_writes_consistent_json(tmp_path, run_benchmark):
    assert run_benchmark("winograd", ["--quick", "--results-dir", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "winograd_quick.json").read_text())
    f2, f4 = next(iter(payload["results"].values()))
    assert f2["int8_wide_equals_direct"] and f4["int8_wide_equals_direct"]
    assert (f2["bits_needed_v"], f4["bits_needed_v"]) == (10, 15)
    assert f2["max_abs_v"] <= f2["bound_v"] and f4["max_abs_v"] <= f4["bound_v"]
    assert f2["error_v_u_8bit"] < 0.1 < f4["error_v_u_8bit"]
    assert f2["fp32_winograd_error"] < 1e-5 and f4["fp32_winograd_error"] < 1e-4
