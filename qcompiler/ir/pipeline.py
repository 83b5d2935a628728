"""The pass manager.

A pass is a callable `graph -> PassResult` that may rewrite the graph it is
given in place. A pass with options is a small frozen dataclass with
`__call__`. `Pipeline.run` works on a copy, so a failing pass never leaves the
caller's graph half-rewritten; with `verify_each=True` it checks the IR after
every pass and blames the pass that broke it.

Set `QC_PRINT_AFTER` to print the IR after passes (to stderr):
`all`, `changed` (only passes that modified the graph), or a comma-separated
list of pass names.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from qcompiler.errors import PassError, QCompilerError, VerificationError
from qcompiler.ir.graph import Graph


@dataclass
class PassResult:
    graph: Graph
    modified: bool
    # Human-readable findings, e.g. why a batch norm was left in place.
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PassRecord:
    name: str
    modified: bool
    seconds: float
    notes: tuple[str, ...]


Pass = Callable[[Graph], PassResult]


def pass_name(p: Pass) -> str:
    return getattr(p, "__name__", None) or type(p).__name__


class Pipeline:
    """An ordered list of passes, run one after the other on a copy of the graph."""

    def __init__(self, passes: Sequence[Pass], verify_each: bool = True):
        for p in passes:
            if not callable(p):
                raise TypeError(f"pipeline step {p!r} is not a pass (a callable taking a Graph)")
        self.passes = list(passes)
        self.verify_each = verify_each

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(pass_name(p) for p in self.passes)}])"

    def run(self, graph: Graph) -> Graph:
        return self.run_with_report(graph)[0]

    def run_with_report(self, graph: Graph, stream: TextIO | None = None
                        ) -> tuple[Graph, list[PassRecord]]:
        print_after = _print_after_setting()
        stream = stream or sys.stderr
        if self.verify_each:
            # Check the input first, so that a broken input is not blamed on the first pass.
            try:
                graph.verify()
            except VerificationError as error:
                raise PassError(f"the input graph is invalid, before any pass ran: {error}") from error
        current = graph.copy()
        records: list[PassRecord] = []
        for p in self.passes:
            name = pass_name(p)
            before = ", ".join(r.name for r in records) or "none"
            start = time.perf_counter()
            try:
                result = p(current)
            except QCompilerError as error:
                raise PassError(f"pass '{name}' failed (passes run before it: {before}): "
                                f"{error}") from error
            except Exception as error:
                raise PassError(f"pass '{name}' crashed (passes run before it: {before}): "
                                f"{type(error).__name__}: {error}") from error
            if not isinstance(result, PassResult):
                raise PassError(f"pass '{name}' returned {type(result).__name__}, "
                                "not a PassResult")
            if not isinstance(result.graph, Graph):
                raise PassError(f"pass '{name}' returned a PassResult whose graph is "
                                f"{type(result.graph).__name__}, not a Graph")
            seconds = time.perf_counter() - start
            current = result.graph
            if self.verify_each:
                try:
                    current.verify()
                except VerificationError as error:
                    raise PassError(f"the IR is invalid after pass '{name}' "
                                    f"(passes run before it: {before}): {error}") from error
            records.append(PassRecord(name, result.modified, seconds, tuple(result.notes)))
            if _should_print(print_after, name, result.modified):
                state = "modified" if result.modified else "unchanged"
                stream.write(f"// IR after {name} ({state})\n{current}\n")
        return current, records


def _print_after_setting() -> set[str]:
    raw = os.environ.get("QC_PRINT_AFTER", "").strip()
    return {part.strip() for part in raw.split(",") if part.strip()}


def _should_print(setting: set[str], name: str, modified: bool) -> bool:
    return "all" in setting or name in setting or ("changed" in setting and modified)
