"""How pipeline time grows with graph size.

Part 1: synthetic graphs of about 100, 1k, 3k and 10k nodes, built directly with the IR
API (so torch.export is not timed): chains of conv + batch_norm + relu blocks with a
residual add every two blocks. Each pair of blocks also reads one conv weight through a
`reshape` of a constant (what capture leaves for fold_constants), and every tenth pair
has a dead node (for eliminate_dead_code), so every pass of the canonical float pipeline
has work proportional to the graph. The pipeline alone is timed (median of repeats),
with verify_each on and off; time per node should stay about constant (linear growth).

Part 2: capture (without torch.export, whose time is torch's) plus the canonical float
pipeline on a ResNet-50 (defined below with torchvision's layout, random weights); the
target is under 3 s.

    python benchmarks/pass_scaling.py            # full run, writes results/pass_scaling.{json,md}
    python benchmarks/pass_scaling.py --quick    # CI smoke run, writes results/pass_scaling_quick.*
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import median_seconds, set_threads, write_results  # noqa: E402

from qcompiler.ir import Graph  # noqa: E402
from qcompiler.pipelines import canonical_float_pipeline  # noqa: E402

NODES_PER_PAIR = 8  # reshape, 2 x (conv2d, batch_norm, relu), add


def synthetic_graph(target_nodes: int, channels: int = 8, size: int = 8, seed: int = 0) -> Graph:
    """A residual conv/BN/ReLU chain with about `target_nodes` nodes."""
    rng = np.random.default_rng(seed)
    graph = Graph(f"synthetic_{target_nodes}")
    h = graph.add_input("x", (1, channels, size, size))
    conv = {"stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1}
    pairs = max(1, round(target_nodes / (NODES_PER_PAIR + 0.1)))
    for pair in range(pairs):
        residual = h
        flat = graph.add_constant(f"p{pair}.w_flat", rng.normal(0, 0.2, channels * channels * 9))
        weights = [graph.add_node("reshape", [flat], {"shape": [channels, channels, 3, 3]},
                                  name=f"p{pair}.w0").output,
                   graph.add_constant(f"p{pair}.w1", rng.normal(0, 0.2, (channels, channels, 3, 3)))]
        for block, weight in enumerate(weights):
            prefix = f"p{pair}.b{block}"
            stats = [graph.add_constant(f"{prefix}.{name}", data) for name, data in (
                ("gamma", rng.uniform(0.5, 1.5, channels)), ("beta", rng.normal(0, 0.1, channels)),
                ("mean", rng.normal(0, 0.1, channels)), ("var", rng.uniform(0.5, 1.5, channels)))]
            h = graph.add_node("conv2d", [h, weight], conv, name=f"{prefix}.conv").output
            h = graph.add_node("batch_norm", [h, *stats], name=f"{prefix}.bn").output
            h = graph.add_node("relu", [h], name=f"{prefix}.relu").output
        if pair % 10 == 9:
            graph.add_node("relu", [h], name=f"p{pair}.dead")
        h = graph.add_node("add", [h, residual], name=f"p{pair}.add").output
    graph.outputs = [h]
    return graph.verify()


def time_pipeline(graph: Graph, verify_each: bool, repeats: int, collect_garbage: bool = True
                  ) -> tuple[float, float, list]:
    """Median and fastest time of the pipeline, and the pass records of one more run.
    With `collect_garbage=False` Python's cyclic garbage collector is paused while timing:
    its full collections scan every live object, so their cost grows with the graph, and
    pausing them separates that from the passes' own work."""
    pipeline = canonical_float_pipeline(verify_each=verify_each)
    gc.collect()
    if not collect_garbage:
        gc.disable()
    try:
        median, times = median_seconds(lambda: pipeline.run(graph), repeats,
                                       warmup=1 if repeats > 1 else 0)
    finally:
        gc.enable()
    _, records = pipeline.run_with_report(graph)
    return median, min(times), records


def scaling_rows(sizes: list[int], repeats: int) -> list[dict]:
    rows = []
    for size in sizes:
        graph = synthetic_graph(size)
        nodes = len(graph)
        with_verify, fastest_with, _ = time_pipeline(graph, True, repeats)
        without_verify, fastest_without, records = time_pipeline(graph, False, repeats)
        no_gc, _, _ = time_pipeline(graph, False, repeats, collect_garbage=False)
        optimized = canonical_float_pipeline(verify_each=False).run(graph)
        row = {"nodes": nodes, "nodes_after": len(optimized),
               "verify_on_s": with_verify, "verify_on_us_per_node": with_verify / nodes * 1e6,
               "verify_on_min_s": fastest_with,
               "verify_off_s": without_verify,
               "verify_off_us_per_node": without_verify / nodes * 1e6,
               "verify_off_min_s": fastest_without,
               "verify_off_no_gc_s": no_gc, "verify_off_no_gc_us_per_node": no_gc / nodes * 1e6,
               # One run's split: the copy Pipeline.run makes first is the rest of the time.
               "passes_s": {f"{i}:{r.name}": r.seconds for i, r in enumerate(records)}}
        rows.append(row)
        print(f"{nodes:6d} nodes -> {len(optimized):6d}: verify on {with_verify:7.3f} s "
              f"({row['verify_on_us_per_node']:6.1f} us/node), off {without_verify:7.3f} s "
              f"({row['verify_off_us_per_node']:6.1f} us/node), off without gc "
              f"{row['verify_off_no_gc_us_per_node']:6.1f} us/node", flush=True)
    return rows


# ---- ResNet-50 (He et al. 2016; torchvision's layout, random weights) -------------------------


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * 4
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], 64
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = []
            for index in range(blocks):
                layers.append(Bottleneck(cin, width, stride if index == 0 else 1))
                cin = width * 4
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def export_and_convert(model: nn.Module, inputs: tuple):
    """qc.trace split in two so the parts can be timed apart: torch's part (torch.export) and
    qcompiler's part (conversion to the IR, then verification), as
    `qcompiler.frontends.torch_export.capture.trace`
    runs them. (trace also applies torch's decompositions when a graph holds composite ops;
    ResNet-50 has none.)"""
    from qcompiler.frontends.torch_export.convert import Converter

    def export():
        return torch.export.export(model, inputs)

    def convert(program):
        return Converter(program, model).run().verify()

    return export, convert


def resnet50_row(repeats: int) -> dict:
    torch.manual_seed(0)
    model = ResNet50().eval()
    inputs = (torch.randn(1, 3, 224, 224),)
    export, convert = export_and_convert(model, inputs)
    start = time.perf_counter()
    program = export()
    export_seconds = time.perf_counter() - start
    convert_seconds, _ = median_seconds(lambda: convert(program), repeats, warmup=0)
    graph = convert(program)
    pipeline = canonical_float_pipeline(verify_each=True)
    pipeline_seconds, _ = median_seconds(lambda: pipeline.run(graph), repeats, warmup=0)
    optimized = pipeline.run(graph)
    total = convert_seconds + pipeline_seconds
    row = {"model": "ResNet-50 (224x224)", "nodes": len(graph), "nodes_after": len(optimized),
           "torch_export_s": export_seconds, "capture_without_export_s": convert_seconds,
           "pipeline_verify_on_s": pipeline_seconds, "capture_plus_pipeline_s": total,
           "under_3_s": total < 3.0}
    print(f"ResNet-50: {len(graph)} nodes -> {len(optimized)}; torch.export {export_seconds:.2f} s "
          f"(not counted), capture {convert_seconds:.2f} s + pipeline {pipeline_seconds:.2f} s "
          f"= {total:.2f} s", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller graphs and one repeat (CI smoke run); writes *_quick files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement (default 5, 1 with --quick)")
    parser.add_argument("--results-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    sizes = [100, 1000, 3000] if args.quick else [100, 1000, 3000, 10000]
    repeats = args.repeats or (1 if args.quick else 5)
    rows = scaling_rows(sizes, repeats)
    resnet = resnet50_row(repeats)
    reference = next(r for r in rows if r["nodes"] >= 900)  # below ~1k nodes fixed costs show
    largest = rows[-1]
    def growth(key: str) -> float:  # time per node at the largest size / at ~1k nodes
        return (largest[key] / largest["nodes"]) / (reference[key] / reference["nodes"])

    notes = [
        f"time per node at {largest['nodes']} nodes / at {reference['nodes']} nodes (1.0 = linear "
        f"growth): with verify_each x{growth('verify_on_s'):.2f} (median), "
        f"x{growth('verify_on_min_s'):.2f} (fastest run); without x{growth('verify_off_s'):.2f} "
        f"(median), x{growth('verify_off_min_s'):.2f} (fastest run); without verify_each and "
        f"with the garbage collector paused x{growth('verify_off_no_gc_s'):.2f} (median)",
        "The no-gc column isolates the passes' own work: Python's full garbage collections scan "
        "every live object, so with a large graph in memory each costs more, which adds a mild "
        "superlinear term to the plain timings.",
        "Synthetic graphs: residual conv/batch_norm/relu chains, 8 channels at 8x8, built with the IR "
        "API; pipeline = canonical_float_pipeline (eliminate_dead_code, fold_constants, "
        "fold_batchnorm, eliminate_dead_code), which copies the graph first.",
        f"ResNet-50: capture (excluding torch.export) + pipeline = "
        f"{resnet['capture_plus_pipeline_s']:.2f} s (target < 3 s).",
    ]
    name = "pass_scaling_quick" if args.quick else "pass_scaling"
    columns = ["nodes", "nodes_after", "verify_on_s", "verify_on_us_per_node", "verify_on_min_s",
               "verify_off_s", "verify_off_us_per_node", "verify_off_min_s",
               "verify_off_no_gc_us_per_node"]
    json_path, md_path = write_results(
        name, "Pipeline time vs graph size",
        {"Synthetic graphs (canonical float pipeline, median of repeats)": (rows, columns),
         "ResNet-50: capture + pipeline": ([resnet], ["model", "nodes", "nodes_after", "torch_export_s",
                                                       "capture_without_export_s",
                                                       "pipeline_verify_on_s",
                                                       "capture_plus_pipeline_s"])},
        command=" ".join(["python benchmarks/pass_scaling.py", *(sys.argv[1:] if argv is None else argv)]),
        notes=notes, settings={"quick": args.quick, "repeats": repeats, "threads": args.threads},
        results_dir=args.results_dir)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
