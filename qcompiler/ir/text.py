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
import math
import re

import numpy as np

from qcompiler.errors import ParseError, VerificationError
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


# The largest element count a type may declare: counts are int64 everywhere (numpy, torch).
_MAX_ELEMENTS = (1 << 63) - 1


def _parse_qparams(qtext: str, where: str) -> QParams:
    fields = _parse_keyvalues(qtext.rstrip(")"), where)
    expected = ("expected q(bits=8, signed=True, axis=None, narrow_range=False, scale=[...], "
                "zero_point=[...])")
    try:
        scale = np.array(fields.pop("scale"), np.float32)
        zero_point = np.array(fields.pop("zero_point"), np.int64)
        qparams = QParams(scale, zero_point.astype(np.int32), **fields)
    except (KeyError, TypeError, ValueError) as error:
        reason = f"missing {error}" if isinstance(error, KeyError) else str(error)
        raise ParseError(f"{where}: bad quantization parameters q({qtext}: {reason}; {expected}") from None
    bits = qparams.bits
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ParseError(f"{where}: quantization parameters with bits={bits!r}; integer types hold "
                         "2 to 16 bits")
    if not (np.isfinite(scale).all() and (scale > 0).all()):
        raise ParseError(f"{where}: quantization scale {scale.tolist()} is not finite and positive")
    if scale.shape != zero_point.shape and zero_point.size != 1:
        raise ParseError(f"{where}: {scale.size} scale(s) but {zero_point.size} zero point(s)")
    return qparams


def _parse_type(text: str, where: str) -> tuple[tuple[int, ...], str, QParams | None]:
    text = text.strip()
    qparams = None
    if " q(" in text:
        text, _, qtext = text.partition(" q(")
        qparams = _parse_qparams(qtext, where)
    match = _TYPE.match(text)
    if not match or match.group(1) not in DTYPES:
        raise ParseError(f"{where}: bad type {text!r}; expected e.g. f32[1,3,224,224] or "
                         "f32[N,3,224,224]")
    try:
        dims = tuple(parse_dim(d) for d in match.group(2).split(",") if d)
    except ValueError as error:
        raise ParseError(f"{where}: bad type {text!r}: {error}") from None
    elements = math.prod(d for d in dims if isinstance(d, int))  # per unit of a symbolic dim
    if elements > _MAX_ELEMENTS:
        raise ParseError(f"{where}: type {text} holds {elements} elements, more than an "
                         "int64 element count can hold")
    if qparams is not None and qparams.axis is not None and not -len(dims) <= qparams.axis < len(dims):
        raise ParseError(f"{where}: quantization axis {qparams.axis} is not an axis of {text}")
    return dims, match.group(1), qparams


def parse(text: str, constants: dict[str, np.ndarray] | None = None, *, verify: bool = True
          ) -> Graph:
    """Read graph text back into a Graph. Constants printed as a digest or as `external` take
    their data from `constants` (name -> array); a digest is checked. The text must be one
    graph: its header, definitions, one `return` line, and `}`. With `verify` (the default)
    the graph is then verified (op signatures, dtypes, shapes), so an impossible graph is a
    ParseError naming what is wrong. Line numbers count every line of the text."""
    constants = constants or {}
    numbered = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)
                if line.strip()]
    if not numbered:
        raise ParseError("empty text: expected 'graph NAME(...) {'")
    first_line, header_text = numbered[0]
    header = _HEADER.match(header_text)
    if not header:
        raise ParseError(f"line {first_line}: expected 'graph NAME(%x: f32[...]) {{', got "
                         f"{header_text!r}")
    graph = Graph(header.group(1))
    for part in _split_top_level(header.group(2)):
        match = _INPUT.match(part)
        if match is None:
            raise ParseError(f"line {first_line}: expected a graph input like '%x: f32[1,3]', got "
                             f"{part!r}")
        name, type_text = match.groups()
        if name in graph.values:
            raise ParseError(f"line {first_line}: graph input %{name} is defined twice")
        shape, dtype, qparams = _parse_type(type_text, f"line {first_line}")
        graph.add_input(name, shape, dtype).qparams = qparams

    def lookup(name: str, where: str) -> Value | None:
        if name == "_":
            return None
        value = graph.values.get(name.lstrip("%"))
        if value is None:
            raise ParseError(f"{where}: %{name.lstrip('%')} is used before it is defined")
        return value

    closed, returned = False, None  # returned: the line number of the return
    for number, line in numbered[1:]:
        where = f"line {number}"
        if closed:
            raise ParseError(f"{where}: text after the graph's closing '}}': {line!r}")
        if line == "}":
            if returned is None:
                raise ParseError(f"{where}: the graph has no 'return' line; end it with "
                                 "'return %output' before '}'")
            closed = True
            continue
        if returned is not None:
            kind = "a second 'return'" if _RETURN.match(line) else f"{line!r} comes"
            raise ParseError(f"{where}: {kind} after the 'return' on line {returned}; 'return' "
                             "is the last line before '}'")
        if (match := _RETURN.match(line)) is not None:
            graph.outputs = [lookup(n.strip(), where) for n in match.group(1).split(",") if n.strip()]
            returned = number
            continue
        if (match := _CONST.match(line)) is not None:
            _parse_constant(graph, match, where, constants)
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
    if not closed:
        last = numbered[-1][0]
        missing = "a 'return' line and " if returned is None else ""
        raise ParseError(f"line {last}: the text ends without {missing}the graph's closing '}}'")
    if verify:
        try:
            graph.verify()
        except VerificationError as error:
            raise ParseError(f"the text parses but does not describe a valid graph: {error}") from None
    return graph


def _parse_constant(graph: Graph, match, where: str, constants: dict) -> None:
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
        if data.size != math.prod(shape):
            raise ParseError(f"{where}: constant %{name} lists {data.size} numbers but its "
                             f"type {type_text.strip()} holds {math.prod(shape)}")
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
