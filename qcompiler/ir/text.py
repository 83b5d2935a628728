"""Deterministic SSA text for graphs, and its parser.

    graph main(%x: f32[1,3,32,32]) {
      %conv.weight = const sha1:3f2a9c1b0d4e5f60 : f32[8,3,3,3]
      %scale = const dense<[0.5]> : f32[1]
      %conv = conv2d(%x, %conv.weight, _) {dilation=[1, 1], groups=1, padding=[1, 1], stride=[1, 1]}
          : f32[1,8,32,32]   (one line in real output)
      %a, %b = split(%conv) {axis=1, sizes=[4, 4]} : f32[1,4,32,32], f32[1,4,32,32]
      return %a, %b
    }

A constant with at most `INLINE_LIMIT` elements prints its data (`dense<...>`);
a larger one prints a content digest, and `parse` takes its data from the
`constants` mapping. `print_graph(graph, external_constants=True)` prints every
constant as `external` (its data given to `parse` unchecked: a structure to fill
with other weights of the same types). `_` is an absent optional input. Attributes print sorted
by name, as Python literals. Quantization parameters follow a type as
`q(bits=8, signed=True, ...)`. A symbolic dimension prints as its symbol, times its
factor if any (`f32[N,3,224,224]`, `f32[N*4,16,8]`; `qcompiler.ir.dims`).
"""

from __future__ import annotations

import ast
import re

import numpy as np

from qcompiler.errors import ParseError
from qcompiler.ir.dims import is_static, parse_dim
from qcompiler.ir.dtypes import DTYPES
from qcompiler.ir.graph import Graph, QParams, Value
from qcompiler.ir.printer import (  # noqa: F401  (the text form's printer, as qcompiler.ir.text.print_graph)
    _QPARAM_FIELDS,
    INLINE_LIMIT,
    format_attrs,
    format_type,
    print_graph,
)

# ---- parsing -------------------------------------------------------------------

_NAME = r"[A-Za-z0-9_.:/\-]+"
_HEADER = re.compile(rf"^graph ({_NAME})\((.*)\) \{{$")
_CONST = re.compile(rf"^%({_NAME}) = const (dense<(.*)>|sha1:([0-9a-f]+)|external) : (.*)$")
_NODE = re.compile(rf"^(%{_NAME}(?:, %{_NAME})*) = ([a-z_0-9]+)\((.*?)\)(?: (\{{.*\}}))? : (.*)$")
_RETURN = re.compile(r"^return(.*)$")
_TYPE = re.compile(r"^(\w+)\[([A-Za-z0-9_*,]*)\]$")
_INPUT = re.compile(rf"^%?({_NAME})\s*:\s*(.+)$")


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on separators that are not inside brackets, parentheses or quotes."""
    parts, depth, quote, escaped, current = [], 0, None, False, []
    for char in text:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char in "([{<":
            depth += 1
        elif char in ")]}>":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    tail = "".join(current).strip()
    if tail:
        parts.append(tail)
    return parts


class _NonFiniteFloats(ast.NodeTransformer):
    """Turn `float('inf')` / `float('nan')` calls, which the printer writes for non-finite
    floats, into constants so that `ast.literal_eval` accepts them at any depth."""

    def visit_Call(self, node: ast.Call):
        if (isinstance(node.func, ast.Name) and node.func.id == "float" and len(node.args) == 1
                and not node.keywords and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            return ast.Constant(float(node.args[0].value))
        return node


def _literal(text: str, where: str):
    text = text.strip()
    try:
        tree = _NonFiniteFloats().visit(ast.parse(text, mode="eval"))
        return ast.literal_eval(tree)
    except (ValueError, SyntaxError, TypeError):
        raise ParseError(f"{where}: cannot read literal {text!r}") from None


def _parse_keyvalues(text: str, where: str) -> dict:
    result = {}
    for part in _split_top_level(text):
        key, sep, raw = part.partition("=")
        if not sep:
            raise ParseError(f"{where}: expected key=value, got {part!r}")
        result[key.strip()] = _literal(raw, where)
    return result


def _parse_type(text: str, where: str) -> tuple[tuple[int, ...], str, QParams | None]:
    text = text.strip()
    qparams = None
    if " q(" in text:
        text, _, qtext = text.partition(" q(")
        fields = _parse_keyvalues(qtext.rstrip(")"), where)
        try:
            qparams = QParams(np.array(fields.pop("scale"), np.float32),
                              np.array(fields.pop("zero_point"), np.int32), **fields)
        except (KeyError, TypeError, ValueError) as error:
            reason = f"missing {error}" if isinstance(error, KeyError) else str(error)
            raise ParseError(f"{where}: bad quantization parameters q({qtext}: {reason}; expected "
                             "q(bits=8, signed=True, axis=None, narrow_range=False, scale=[...], "
                             "zero_point=[...])") from None
    match = _TYPE.match(text)
    if not match or match.group(1) not in DTYPES:
        raise ParseError(f"{where}: bad type {text!r}; expected e.g. f32[1,3,224,224] or "
                         "f32[N,3,224,224]")
    try:
        dims = tuple(parse_dim(d) for d in match.group(2).split(",") if d)
    except ValueError as error:
        raise ParseError(f"{where}: bad type {text!r}: {error}") from None
    return dims, match.group(1), qparams


def parse(text: str, constants: dict[str, np.ndarray] | None = None) -> Graph:
    """Read graph text back into a Graph. Constants printed as a digest or as `external` take
    their data from `constants` (name -> array); a digest is checked."""
    constants = constants or {}
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ParseError("empty text: expected 'graph NAME(...) {'")
    header = _HEADER.match(lines[0])
    if not header:
        raise ParseError(f"line 1: expected 'graph NAME(%x: f32[...]) {{', got {lines[0]!r}")
    graph = Graph(header.group(1))
    for part in _split_top_level(header.group(2)):
        match = _INPUT.match(part)
        if match is None:
            raise ParseError(f"line 1: expected a graph input like '%x: f32[1,3]', got {part!r}")
        name, type_text = match.groups()
        if name in graph.values:
            raise ParseError(f"line 1: graph input %{name} is defined twice")
        shape, dtype, qparams = _parse_type(type_text, "line 1")
        graph.add_input(name, shape, dtype).qparams = qparams

    def lookup(name: str, where: str) -> Value | None:
        if name == "_":
            return None
        value = graph.values.get(name.lstrip("%"))
        if value is None:
            raise ParseError(f"{where}: %{name.lstrip('%')} is used before it is defined")
        return value

    closed = False
    for number, line in enumerate(lines[1:], start=2):
        where = f"line {number}"
        if closed:
            raise ParseError(f"{where}: text after the graph's closing '}}': {line!r}")
        if line == "}":
            closed = True
            continue
        if (match := _RETURN.match(line)) is not None:
            graph.outputs = [lookup(n.strip(), where) for n in match.group(1).split(",") if n.strip()]
            continue
        if (match := _CONST.match(line)) is not None:
            name, _, dense, digest, type_text = match.groups()
            shape, dtype, qparams = _parse_type(type_text, where)
            if not is_static(shape):
                raise ParseError(f"{where}: constant %{name} has a symbolic shape "
                                 f"{type_text.strip()}; constants have concrete shapes")
            if dense is not None:
                try:
                    data = np.array(_literal(dense, where), dtype=DTYPES[dtype])
                except (ValueError, TypeError, OverflowError) as error:
                    raise ParseError(f"{where}: constant %{name} data is not a flat list of "
                                     f"{dtype} numbers: {error}") from None
                if data.size != int(np.prod(shape)):
                    raise ParseError(f"{where}: constant %{name} lists {data.size} numbers but its "
                                     f"type {type_text.strip()} holds {int(np.prod(shape))}")
                data = data.reshape(shape)
            elif name in constants:
                data = np.asarray(constants[name], dtype=DTYPES[dtype])
                if data.shape != shape:
                    raise ParseError(f"{where}: data given for %{name} has shape {list(data.shape)}, "
                                     f"but the text says {type_text.strip()}")
            else:
                kind = "a digest" if digest is not None else "external"
                raise ParseError(f"{where}: constant %{name} is printed as {kind}; pass its "
                                 "data in parse(text, constants={name: array})")
            if name in graph.values:
                raise ParseError(f"{where}: value %{name} is defined twice")
            value = graph.add_constant(name, data, dtype)
            value.qparams = qparams
            if digest is not None and value.digest() != digest:
                raise ParseError(f"{where}: data given for %{name} does not match sha1:{digest}")
            continue
        if (match := _NODE.match(line)) is not None:
            outs, op, args, attr_text, type_text = match.groups()
            inputs = [lookup(a.strip(), where) for a in _split_top_level(args)]
            attrs = _parse_keyvalues(attr_text[1:-1], where) if attr_text else {}
            types = [_parse_type(t, where) for t in _split_top_level(type_text)]
            names = [o.strip().lstrip("%") for o in outs.split(",")]
            if len(types) != len(names):
                raise ParseError(f"{where}: {len(names)} outputs but {len(types)} types")
            for index, name in enumerate(names):
                if name in graph.values or name in names[:index]:
                    raise ParseError(f"{where}: value %{name} is defined twice")
            node = graph.create_node(op, inputs, names, [(s, d) for s, d, _ in types], attrs)
            for value, (_, _, qparams) in zip(node.outputs, types, strict=True):
                value.qparams = qparams
            continue
        raise ParseError(f"{where}: cannot read {line!r}")
    return graph
