"""How long the CLI's long steps will take, said before they start.

Long steps show tqdm bars on a terminal (quiet when piped); this module gives the line
printed before them: the expected duration, from one timed node-by-node run of the float
graph on one batch (`float_run_seconds`, the best of two) times a per-batch factor for the
step (`STEP_FACTORS`). The factors are the middle of what was measured on MobileNetV2 (224),
the ResNet-style CNN and the digits CNN (2-core Xeon, with and without other load):

| step, per batch | measured, in float runs |
|---|---|
| calibration (observers dominate) | 6-36 |
| empirical bias correction | 5-14 |
| integer interpreter | 3-5 |
| float64 fake-quant simulation | 14-26 |
| one fake-quant run (sensitivity, per layer) | 4-8 |

So an estimate is good to a factor of about two: it says whether to wait seconds or
minutes, not when to come back.
"""

from __future__ import annotations

import sys
import time

from qcompiler.ir import Graph
from qcompiler.ir.evaluate import evaluate, graph_inputs

STEP_FACTORS = {"calibrate": 10.0, "correct_bias": 8.0, "interpreter": 4.0,
                "exact_simulation": 16.0, "fake_quant_run": 6.0}


def float_run_seconds(graph: Graph, batch) -> float:
    """Seconds one node-by-node float run of `graph` takes on `batch` (best of two)."""
    inputs = graph_inputs(batch, graph)
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        evaluate(graph, inputs)
        best = min(best, time.perf_counter() - start)
    return best


def expected_seconds(float_run: float, steps: dict[str, int]) -> float:
    """The expected duration of `steps` ({step name: batches}) from one float run's time."""
    return float_run * sum(STEP_FACTORS[step] * count for step, count in steps.items())


def about(seconds: float) -> str:
    """A duration as people say it: "about 20 s", "about 3 min", "a few seconds"."""
    if seconds < 3:
        return "a few seconds"
    if seconds < 90:
        return f"about {max(5, round(seconds / 5) * 5)} s"
    return f"about {round(seconds / 60)} min"


def show_bars(progress: bool | None) -> bool:
    """Whether to draw tqdm bars: as asked, else only when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else progress
