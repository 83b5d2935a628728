"""The oracle every function-preserving test uses: run graphs with the torch backend (an
executor independent of the passes under test) and compare the functions before and after.

    run(graph, *inputs) -> tuple of output tensors
    assert_same_function(before, after)                        # three seeded random inputs
    assert_same_function(before, after, inputs=[(x,), ...])     # or given inputs

The default tolerance is float32's near 1e-5 (STYLE.md, habit 7): relative 1e-5 and
absolute 1e-5. `scale_relative=True` makes the absolute part 1e-5 of the largest |output|,
for graphs whose outputs are far from 1 (their rounding error scales with them); a test
that needs another tolerance passes it and says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

import qcompiler as qc
from qcompiler.ir import Graph
from qcompiler.ir.dims import shape_at

SEEDS = (0, 1, 2)


def run(graph: Graph, *inputs) -> tuple[torch.Tensor, ...]:
    """The graph's outputs on `inputs` through `qc.to_torch`, always a tuple."""
    with torch.no_grad():
        outputs = qc.to_torch(graph, trainable=False)(*inputs)
    return outputs if isinstance(outputs, tuple) else (outputs,)


def random_inputs(graph: Graph, seed: int, batch: int = 2) -> list[torch.Tensor]:
    """One standard-normal tensor per graph input, from `seed`; a symbolic batch is `batch`."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape_at(value.shape, batch), generator=generator) for value in graph.inputs]


def assert_same_function(before: Graph, after: Graph, inputs: Sequence[Sequence] | None = None, *,
                         rtol: float = 1e-5, atol: float = 1e-5, scale_relative: bool = False,
                         seeds: Sequence[int] = SEEDS) -> None:
    """`after` computes what `before` does, output by output, on each input tuple in `inputs`
    (default: random inputs from each of `seeds`)."""
    cases = inputs if inputs is not None else [random_inputs(before, seed) for seed in seeds]
    for case in cases:
        for want, got in zip(run(before, *case), run(after, *case), strict=True):
            tolerance = atol * float(want.abs().max()) if scale_relative else atol
            torch.testing.assert_close(got, want, rtol=rtol, atol=tolerance)


class Lambda(torch.nn.Module):
    """A module whose forward is `fn(self, *inputs)`; submodules are passed as keyword arguments."""

    def __init__(self, fn, **children):
        super().__init__()
        self.fn = fn
        for name, child in children.items():
            setattr(self, name, child)

    def forward(self, *inputs):
        return self.fn(self, *inputs)
