"""Symbolic dimensions: a shape holds ints and `Dim`s, so one graph runs at any batch size.

    %x: f32[N,3,224,224]            the batch dimension of an image input
    %h: f32[N*4,16,8]                a reshape that merged the batch with four heads

A `Dim` is `factor * name`: a named size unknown until the graph runs (`N`, the batch),
times a positive integer (the heads a reshape folded into the batch). Nothing else is
symbolic: every other dimension, every constant and every attribute is a plain int.
Attributes never name a symbol: an op whose attribute would depend on the batch writes
-1 where the batch goes (`reshape {shape=[-1, 1280]}`), as torch and numpy read it.

For a backend. A value's shape is a tuple whose items are `int` or `Dim`; `dim.name`
and `dim.factor` say what a symbolic one is (a Relax lowering maps each distinct name to
one `tir.Var` and a `Dim` to `var * factor`). A backend that needs concrete shapes calls
`Graph.at_batch(n)` (every symbol set to n) or `shape_at(shape, n)` for one value;
`bind_sizes` solves the symbols from the arrays a caller passes.

How types are inferred with symbols (`qcompiler.ir.ops.infer_types`): the op runs on meta
tensors twice, with every symbol at `PROBES[0]` and then at `PROBES[1]`; a dimension
that is the same in both runs is static, one that changes is `factor * name` with factor
the slope, and anything else (an affine `N + 1`, from concatenating a batch with a fixed
row; a dimension that shrinks) is refused. Two sizes are enough because every IR op's
output size is linear in each input size, and two distinct probes also refuse an op
that only works at one batch size (a reshape to a literal batch fails at one of them).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The sizes symbols take when an op is run on meta tensors to infer its types. Odd primes
# above the sizes graphs use for heads or groups, so that a size only one batch size fits
# (a literal batch, a broadcast against a fixed dimension) fails at one of them.
PROBES = (5, 7)

_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEXT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?:\*([0-9]+))?$")


@dataclass(frozen=True)
class Dim:
    """`factor * name`: a dimension whose size is known when the graph runs (see the module
    docstring). `Dim("N")` is the batch; `Dim("N", 12)` prints as `N*12`."""

    name: str = "N"
    factor: int = 1

    def __post_init__(self):
        if not isinstance(self.name, str) or not _SYMBOL.match(self.name):
            raise ValueError(f"a symbolic dimension's name must be an identifier, got {self.name!r}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 1:
            raise ValueError(f"a symbolic dimension's factor must be a positive int, got {self.factor!r}")

    def __str__(self) -> str:
        return self.name if self.factor == 1 else f"{self.name}*{self.factor}"

    def __repr__(self) -> str:
        return f"Dim({str(self)!r})"

    def __mul__(self, other):
        if isinstance(other, int) and not isinstance(other, bool) and other >= 1:
            return Dim(self.name, self.factor * other)
        return NotImplemented

    __rmul__ = __mul__

    def at(self, sizes: Mapping[str, int] | int) -> int:
        """The size this dimension has when its symbol is `sizes[name]` (or `sizes`, an int)."""
        size = sizes if isinstance(sizes, int) else sizes.get(self.name)
        if size is None:
            raise KeyError(f"no size given for symbol {self.name}")
        return self.factor * int(size)

    def __index__(self):
        # Code that needs a number must ask for one at a batch size (shape_at); failing here
        # beats a silent guess.
        raise TypeError(f"symbolic dimension {self} has no value until the graph runs; use "
                        "qcompiler.ir.dims.shape_at(shape, batch) or Graph.at_batch(batch)")

    __int__ = __index__


BATCH = Dim("N")

DimLike = int | Dim


def is_static(shape: Sequence[DimLike]) -> bool:
    return not any(isinstance(d, Dim) for d in shape)


def symbols(shape: Sequence[DimLike]) -> set[str]:
    return {d.name for d in shape if isinstance(d, Dim)}


def shape_at(shape: Sequence[DimLike], sizes: Mapping[str, int] | int) -> tuple[int, ...]:
    """The concrete shape when each symbol takes `sizes[name]` (an int: every symbol)."""
    return tuple(d.at(sizes) if isinstance(d, Dim) else int(d) for d in shape)


def normalize_shape(shape: Sequence) -> tuple[DimLike, ...]:
    """A shape as the IR stores it: Python ints (numpy ints converted) and Dims."""
    return tuple(d if isinstance(d, Dim) else int(d) for d in shape)


def format_dim(dim: DimLike) -> str:
    return str(dim)


def parse_dim(text: str) -> DimLike:
    """`3` -> 3, `N` -> Dim("N"), `N*12` -> Dim("N", 12); ValueError otherwise."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    match = _TEXT.match(text)
    if match is None:
        raise ValueError(f"bad dimension {text!r}; expected an int, a symbol such as N, or N*12")
    return Dim(match.group(1), int(match.group(2) or 1))


def bind_sizes(shape: Sequence[DimLike], actual: Sequence[int], sizes: dict[str, int],
               where: str) -> str | None:
    """Match a concrete `actual` shape against `shape`, recording each symbol's size in
    `sizes` (shared across the inputs of one run). Returns why they do not match, or None."""
    if len(actual) != len(shape):
        return f"{where} has rank {len(actual)}, expected {len(shape)}"
    for axis, (want, got) in enumerate(zip(shape, actual, strict=True)):
        if not isinstance(want, Dim):
            if want != got:
                return f"{where} has size {got} on axis {axis}, expected {want}"
            continue
        if got % want.factor or got == 0:
            return (f"{where} has size {got} on axis {axis}, expected a positive multiple of "
                    f"{want.factor} ({want})")
        size = got // want.factor
        if sizes.setdefault(want.name, size) != size:
            return (f"{where} has {want} = {got} on axis {axis}, but another input set "
                    f"{want.name} = {sizes[want.name]}")
    return None


def solve_probe_dims(runs: Sequence[tuple[int, ...]], base: int, step: int, name: str,
                     ) -> tuple[DimLike, ...]:
    """Output dims from meta runs at symbol size `base` (runs[0]) and `base + step` (runs[1]):
    equal dims are static, a dim growing by `factor * step` from `factor * base` is
    `Dim(name, factor)`. ValueError names an axis that is neither."""
    first, second = runs
    if len(first) != len(second):
        raise ValueError(f"the output rank depends on {name} ({len(first)} vs {len(second)})")
    dims: list[DimLike] = []
    for axis, (a, b) in enumerate(zip(first, second, strict=True)):
        if a == b:
            dims.append(int(a))
            continue
        factor, remainder = divmod(b - a, step)
        if remainder or factor < 1 or a != factor * base:
            raise ValueError(f"output axis {axis} is not a multiple of {name} (size {a} at "
                             f"{name}={base}, {b} at {name}={base + step})")
        dims.append(Dim(name, factor))
    return tuple(dims)
