"""The pass manager.

A pass is a function `graph -> PassResult`, or a frozen dataclass of options whose
`__call__(graph)` returns a PassResult. Every pass declares whether it works in place
(`in_place`: it rewrites the graph it is given and returns it) or not (it builds and
returns a new graph, leaving its input alone): a function pass as an attribute set after
its definition, a class as a ClassVar; a class names itself in a `name` ClassVar (else its
class name is used). `Pipeline.run` works on a copy, so a failing pass never leaves the
caller's graph half-rewritten; the copy is made once, before the first pass that works in
place (a pass that does not declare `in_place` is assumed to). With `verify_each=True` it
checks the IR after every pass and blames the pass that broke it.

`print_after` prints the IR after passes (to stderr, or the stream given to
`run_with_report`): "all", "changed" (only passes that modified the graph), or pass names
(a list, or one comma-separated string). When it is not given, the environment variable
`QC_PRINT_AFTER` holds the same choice (a convenience for runs you cannot edit).
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from qcompiler.errors import OptionError, PassError, QCompilerError, VerificationError
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
    """A function pass's name, a pass class's declared `name`, else its class name."""
    declared = getattr(type(p), "name", None)
    if isinstance(declared, str):
        return declared
    return getattr(p, "__name__", None) or type(p).__name__


def works_in_place(p: Pass) -> bool | None:
    """The pass's declaration: True (rewrites the graph it is given), False (returns a new
    graph), None (undeclared)."""
    return getattr(p, "in_place", None)


class Pipeline:
    """An ordered list of passes, run one after the other on a copy of the graph."""

    def __init__(self, passes: Sequence[Pass], verify_each: bool = True,
                 print_after: str | Iterable[str] | None = None):
        for p in passes:
            if not callable(p):
                raise OptionError(f"pipeline step {p!r} is not a pass (a callable taking a Graph)")
        self.passes = list(passes)
        self.verify_each = verify_each
        self.print_after = print_after

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(pass_name(p) for p in self.passes)}])"

    def run(self, graph: Graph) -> Graph:
        return self.run_with_report(graph)[0]

    def run_with_report(self, graph: Graph, stream: TextIO | None = None
                        ) -> tuple[Graph, list[PassRecord]]:
        print_after = _print_after_setting(self.print_after)
        stream = stream or sys.stderr
        if self.verify_each:
            # Check the input first, so that a broken input is not blamed on the first pass.
            try:
                graph.verify()
            except VerificationError as error:
                raise PassError(f"the input graph is invalid, before any pass ran: {error}") from error
        current, copied = graph, False
        records: list[PassRecord] = []
        for p in self.passes:
            name = pass_name(p)
            in_place = works_in_place(p)
            if not copied and in_place is not False:
                current, copied = current.copy(), True
            before = ", ".join(r.name for r in records) or "none"
            start = time.perf_counter()
            try:
                result = p(current)
            except QCompilerError as error:
                raise failed_in_pass(type(error))(f"pass '{name}' failed (passes run before it: "
                                                  f"{before}): {error}") from error
            except Exception as error:
                raise PassError(f"pass '{name}' crashed (passes run before it: {before}): "
                                f"{type(error).__name__}: {error}") from error
            if not isinstance(result, PassResult):
                raise PassError(f"pass '{name}' returned {type(result).__name__}, "
                                "not a PassResult")
            if not isinstance(result.graph, Graph):
                raise PassError(f"pass '{name}' returned a PassResult whose graph is "
                                f"{type(result.graph).__name__}, not a Graph")
            if in_place and result.graph is not current:
                raise PassError(f"pass '{name}' declares that it works in place but returned "
                                "another graph")
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
        if not copied:  # no pass worked in place: the result is new, or the input itself
            current = current.copy() if current is graph else current
        return current, records


@functools.cache
def failed_in_pass(error_class: type) -> type:
    """The class of the error a pipeline raises when a pass raised one of `error_class`: a
    PassError (it names the pass and those before it) that is still an `error_class`, so
    `except qc.QuantizationError` catches a quantization error raised inside `qc.quantize`.
    Made once per class; it keeps the class's name."""
    if issubclass(error_class, PassError):
        return error_class
    return type(error_class.__name__, (error_class, PassError),
                {"__module__": error_class.__module__, "__doc__": error_class.__doc__})


def _print_after_setting(print_after: str | Iterable[str] | None) -> set[str]:
    if print_after is None:
        print_after = os.environ.get("QC_PRINT_AFTER", "")
    parts = print_after.split(",") if isinstance(print_after, str) else list(print_after)
    return {part.strip() for part in parts if part.strip()}


def _should_print(setting: set[str], name: str, modified: bool) -> bool:
    return "all" in setting or name in setting or ("changed" in setting and modified)
