"""Winograd convolution (F(2x2, 3x3) and F(4x4, 3x3), `qc.passes.convert_to_winograd`):
numeric error in FP32 and in simulated INT8, the integer width its transformed input needs,
and its speed on our compiled FP32 TVM build against the direct conv.

Layers: single 3x3 stride-1 convs (padding 1, bias) of ResNet-like shapes, weights
Kaiming-normal, inputs ReLU of a standard normal (seed 0), batch 1.

- FP32: the largest |error| of the direct conv (torch, float32) and of the Winograd graph
  (`qc.to_torch`, float32) against a float64 direct conv, over max |y|.
- INT8: input symmetric int8 per tensor, weight int8 per output channel. The direct integer
  accumulator is exact. Winograd in integers needs the transformed input V = B^T d B wider
  than 8 bits (`max_abs_v` seen and the worst case `bound_v`: bits_needed); with V and
  U = G g G^T kept exact the result equals the direct accumulator; with V and U rounded to
  `b` bits in the Winograd domain (what an 8-bit Winograd kernel would store), the error of
  the accumulator over max |acc| is reported at 8, 10, 12 and 16 bits.
- Speed: `qc.backends.tvm.build(graph, "host")`, the median of `benchmark(repeat=20,
  number=5)`, direct graph against the Winograd graph; MACs from `qc.cost` (the Winograd
  graph's transforms are convolutions with constant kernels, counted in full); the two
  slowest kernels of one profiled call (`benchmark(profile=True)`: instrumented, so
  slower than the median).

    python benchmarks/winograd.py            # writes results/winograd.*
    python benchmarks/winograd.py --quick    # one small layer, no TVM
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import set_threads, write_results  # noqa: E402

import qcompiler as qc  # noqa: E402
from qcompiler.numerics import winograd  # noqa: E402

SHAPES = [(16, 16, 32), (64, 64, 28), (128, 128, 14)]  # (C_in = C_out, ..., H = W)
QUANTIZED_BITS = (8, 10, 12, 16)


def _layer(channels: int, size: int, seed: int = 0):
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d(channels, channels, 3, padding=1).eval()
    torch.nn.init.kaiming_normal_(conv.weight)
    x = torch.relu(torch.randn(1, channels, size, size))
    return conv, x


@torch.no_grad()
def fp32_errors(conv, x, tile: int) -> dict:
    truth = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
    scale = float(truth.abs().max())
    graph = qc.trace(conv, (x,))
    qc.passes.convert_to_winograd(tile=tile)(graph)
    direct = conv(x).double()
    rewritten = qc.to_torch(graph)(x).double()
    return {"fp32_direct_error": float((direct - truth).abs().max()) / scale,
            "fp32_winograd_error": float((rewritten - truth).abs().max()) / scale}


def int8_errors(conv, x, tile: int) -> dict:
    x_np, w_np = x.double().numpy(), conv.weight.detach().double().numpy()
    x_q = np.clip(np.round(x_np / (np.abs(x_np).max() / 127)), -127, 127)
    w_scale = np.abs(w_np).reshape(len(w_np), -1).max(axis=1) / 127
    w_q = np.clip(np.round(w_np / w_scale[:, None, None, None]), -127, 127)
    exact = F.conv2d(torch.from_numpy(x_q), torch.from_numpy(w_q), padding=1).numpy()
    wide = np.round(winograd.winograd_conv(x_q, w_q, tile, padding=1))
    bt, _, _ = winograd.matrices(tile)
    padded = np.pad(x_q, ((0, 0), (0, 0), (1, 1), (1, 1)))
    t = tile + 2
    windows = np.lib.stride_tricks.sliding_window_view(padded, (t, t), axis=(2, 3))[:, :, ::tile, ::tile]
    max_v = float(np.abs(np.einsum("ia,nchwab,jb->nchwij", bt, windows, bt)).max())
    bound = winograd.transformed_input_bound(tile, 127)
    row = {"int8_wide_equals_direct": bool(np.array_equal(wide, exact)),
           "max_abs_v": max_v, "bound_v": bound, "bits_needed_v": int(np.ceil(np.log2(bound + 1))) + 1}
    scale = np.abs(exact).max()
    for bits in QUANTIZED_BITS:
        rounded = winograd.winograd_conv(x_q, w_q, tile, padding=1, quantize_bits=bits)
        row[f"error_v_u_{bits}bit"] = float(np.abs(rounded - exact).max() / scale)
    return row


def tvm_speed(conv, x, tile: int | None) -> tuple[float, int, str]:
    from qcompiler.backends import tvm as qtvm

    graph = qc.trace(conv, (x,))
    if tile is not None:
        qc.passes.convert_to_winograd(tile=tile)(graph)
    compiled = qtvm.build(graph, "host", batch=1)
    expected = conv(torch.from_numpy(compiled.example_inputs()[0])).detach().numpy()
    got = np.asarray(compiled.run(*compiled.example_inputs()))
    if np.abs(got - expected).max() > 1e-3 * np.abs(expected).max():
        raise AssertionError(f"TVM output of tile {tile} differs from torch")
    timing = compiled.benchmark(repeat=20, number=5)
    profile = compiled.benchmark(repeat=1, number=1, profile=True).per_op
    slowest = ", ".join(f"{'/'.join(op.nodes) or op.function} ({op.kernel}) {op.total_ms:.3g} ms"
                        for op in profile[:2])
    return timing.median_ms, qc.cost(graph, batch=1).macs, slowest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    set_threads(1)
    shapes = SHAPES[:1] if args.quick else SHAPES
    numeric_rows, speed_rows = [], []
    for channels, _, size in shapes:
        conv, x = _layer(channels, size)
        layer = f"{channels}->{channels}, {size}x{size}"
        for tile in winograd.TILES:
            numeric_rows.append({"layer": layer, "tile": f"F({tile}x{tile},3x3)",
                                 **fp32_errors(conv, x, tile), **int8_errors(conv, x, tile)})
        if args.quick:
            continue
        direct_ms, direct_macs, slowest = tvm_speed(conv, x, None)
        speed_rows.append({"layer": layer, "variant": "direct", "median_ms": direct_ms,
                           "macs": direct_macs, "speedup": 1.0, "slowest_kernels": slowest})
        for tile in winograd.TILES:
            ms, macs, slowest = tvm_speed(conv, x, tile)
            speed_rows.append({"layer": layer, "variant": f"F({tile}x{tile},3x3)", "median_ms": ms,
                               "macs": macs, "speedup": direct_ms / ms, "slowest_kernels": slowest})
    numeric_columns = ["layer", "tile", "fp32_direct_error", "fp32_winograd_error",
                       "int8_wide_equals_direct", "max_abs_v", "bound_v", "bits_needed_v",
                       *[f"error_v_u_{b}bit" for b in QUANTIZED_BITS]]
    tables = {"Numeric error (relative to max |y|)": (numeric_rows, numeric_columns)}
    if speed_rows:
        tables["Speed on the compiled FP32 TVM build (host, batch 1, 1 thread)"] = (
            speed_rows, ["layer", "variant", "median_ms", "macs", "speedup", "slowest_kernels"])
    name = "winograd_quick" if args.quick else "winograd"
    command = "python benchmarks/winograd.py" + (" --quick" if args.quick else "")
    notes = _notes(numeric_rows, speed_rows)
    write_results(name, "Winograd convolution: error and speed", tables, command, notes,
                  results_dir=args.results_dir)
    return 0


def _notes(numeric_rows: list[dict], speed_rows: list[dict]) -> list[str]:
    notes = []
    for tile in winograd.TILES:
        rows = [r for r in numeric_rows if r["tile"] == f"F({tile}x{tile},3x3)"]
        worst = max(r["fp32_winograd_error"] / max(r["fp32_direct_error"], 1e-30) for r in rows)
        notes.append(f"F({tile}x{tile}): FP32 error up to {worst:.1f}x the direct conv's; the "
                     f"transformed int8 input needs {rows[0]['bits_needed_v']} bits (bound "
                     f"{rows[0]['bound_v']}), so INT8 Winograd needs int16 intermediates; rounded "
                     f"back to 8 bits in the Winograd domain the accumulator error is up to "
                     f"{max(r['error_v_u_8bit'] for r in rows):.2%} of its range")
    slower = [r for r in speed_rows if r["variant"] != "direct" and r["speedup"] < 1]
    if speed_rows:
        worst = min(speed_rows, key=lambda r: r["speedup"])
        notes.append(f"Winograd is slower than the direct conv on our TVM build in {len(slower)} of "
                     f"{sum(r['variant'] != 'direct' for r in speed_rows)} cases (worst: "
                     f"{worst['variant']} on {worst['layer']}, {worst['median_ms']:.3g} ms against "
                     f"{worst['median_ms'] * worst['speedup']:.3g} ms; its slowest kernels: "
                     f"{worst['slowest_kernels']}): the direct conv runs on the scheduled conv "
                     "kernel, the rewrite's batched matmul of the transformed tiles on TVM's generic "
                     "one, and its transforms as general convolutions with layout changes between "
                     "them; fewer MACs do not pay without a fused Winograd kernel")
    return notes


if __name__ == "__main__":
    sys.exit(main())
