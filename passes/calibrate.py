"""Calibrate the fake_quant nodes of a graph: set every scale and zero point.

    %x.fq = fake_quant(%x, %x.fq.scale, %x.fq.zero_point)     scale NaN  ->  scale from the data

The pass form of `qcompiler.quantization.calibrate` (its module docstring has the method:
quantization points, observers, the data-free path), for pipelines such as the PTQ steps of
`qcompiler.pipelines`; `qcompiler.quantization.calibrate.calibrate(graph, data, config)`
is the same as a function that returns a calibrated copy.

Requires: fake_quant nodes (`insert_fake_quant`), finite weights; `calibration_data`
(batches shaped as the graph inputs), or None for data-free ranges from batch-norm
`statistics` (recorded before `fold_batchnorm`). Preserves: structure, names, shapes,
dtypes; sets the scale/zero-point constants and the qparams of the fake_quant outputs.
Works in place; everything is measured before anything is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from qcompiler.ir import Graph
from qcompiler.ir.pipeline import PassResult
from qcompiler.quantization.calibrate import calibrate_in_place
from qcompiler.quantization.config import QuantConfig


@dataclass(frozen=True, eq=False)  # eq=False: the data may hold tensors
class Calibrate:
    """The configured calibration pass (see the module docstring)."""

    calibration_data: Iterable | None
    config: QuantConfig | None = None
    statistics: Mapping | None = None
    sigmas: float = 3.0
    progress: bool | None = None

    name: ClassVar[str] = "calibrate"
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    def __call__(self, graph: Graph) -> PassResult:
        notes: list[str] = []
        points = calibrate_in_place(graph, self.calibration_data, self.config, progress=self.progress,
                                    statistics=None if self.statistics is None else dict(self.statistics),
                                    sigmas=self.sigmas, notes=notes)
        source = ("batch-norm statistics (data-free)" if self.calibration_data is None
                  else "the calibration data")
        return PassResult(graph, True, [f"calibrated {points} quantization point(s) from {source}",
                                        *notes])


def calibrate(graph: Graph | None = None, /, *, calibration_data: Iterable | None,
              config: QuantConfig | None = None, statistics: Mapping | None = None,
              sigmas: float = 3.0, progress: bool | None = None):
    """`calibrate(calibration_data=batches, config=...)` returns the configured pass; with a
    graph first, it runs it (-> PassResult)."""
    configured = Calibrate(calibration_data, config, statistics, sigmas, progress)
    return configured if graph is None else configured(graph)


calibrate.in_place = True  # as the configured pass it runs
