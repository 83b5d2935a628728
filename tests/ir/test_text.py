"""The SSA text form: it round-trips exactly, and parse errors name the line at fault."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import assert_same_structure, graphs

from qcompiler.errors import ParseError
from qcompiler.ir import Graph, QParams, structurally_equal
from qcompiler.ir.text import INLINE_LIMIT, parse


def _large_constants(graph: Graph) -> dict[str, np.ndarray]:
    return {v.name: v.data for v in graph.constants if v.numel > INLINE_LIMIT}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_text_round_trips_on_random_graphs(graph):
    text = str(graph)
    parsed = parse(text, constants=_large_constants(graph))
    assert structurally_equal(parsed, graph)
    assert str(parsed) == text
    # Compared object by object too: text equality alone cannot see a lossy printer.
    assert_same_structure(graph, parsed)
    parsed.verify()


@settings(max_examples=30, deadline=None)
@given(graphs(qparams=False))
def test_a_graph_that_differs_prints_differently(graph):
    # The negative of the round-trip: structurally_equal is not vacuous.
    other = graph.copy()
    last = other.nodes[-1]
    last.attrs["extra"] = 1  # verify would refuse it; printing must still show it
    assert not structurally_equal(other, graph)


def _graph_with_constants() -> Graph:
    graph = Graph("g")
    x = graph.add_input("x", (2, 17))
    graph.add_constant("small", np.arange(INLINE_LIMIT, dtype=np.float32) / 7)  # unused is fine
    graph.add_constant("over", np.zeros(INLINE_LIMIT + 1, np.int8))
    big = graph.add_constant("big", np.linspace(-1, 1, 17 * 17, dtype=np.float32).reshape(17, 17))
    graph.outputs = [graph.add_node("linear", [x, big], name="fc").output]
    return graph.verify()


def test_small_constants_print_inline_and_large_ones_as_digests():
    graph = _graph_with_constants()
    lines = str(graph).splitlines()
    assert lines[1].startswith("  %small = const dense<[0.0, 0.14285715, 0.2857143, ")
    assert lines[1].endswith("2.142857]> : f32[16]")
    assert lines[2] == f"  %over = const sha1:{graph.values['over'].digest()} : i8[17]"
    assert lines[3] == f"  %big = const sha1:{graph.values['big'].digest()} : f32[17,17]"


def test_digest_constants_need_their_data():
    text = str(_graph_with_constants())
    with pytest.raises(ParseError, match=r"line 3: constant %over is printed as a digest; pass its data"):
        parse(text)


def test_a_wrong_array_for_a_digest_constant_is_refused():
    graph = _graph_with_constants()
    text = str(graph)
    wrong = graph.values["big"].data.copy()
    wrong[3, 4] += 1e-3
    with pytest.raises(ParseError, match=r"line 4: data given for %big does not match sha1:[0-9a-f]{16}"):
        parse(text, constants={"big": wrong, "over": graph.values["over"].data})
    # Same bytes in another shape is a different tensor, not a reshape to be done silently.
    with pytest.raises(ParseError, match=r"line 4: data given for %big has shape \[289\], but the text "
                                         r"says f32\[17,17\]"):
        parse(text, constants={"big": graph.values["big"].data.reshape(-1), "over": np.zeros(17)})
    right = {"big": graph.values["big"].data, "over": np.zeros(17)}  # cast to the printed i8
    assert structurally_equal(parse(text, constants=right), graph)


def test_attribute_literals_print_exactly():
    graph = Graph()
    x = graph.add_input("x", (2, 4))
    y = graph.add_node("layer_norm", [x, None, None], {"normalized_shape": (4,), "eps": 1e-5}).output
    z = graph.add_node("clamp", [y], {"min": None, "max": float("inf")}).output
    w = graph.add_node("gelu", [z], {"approximate": "tanh"}).output
    # (create_node: torch itself refuses a numpy bool for keepdim)
    mean = graph.create_node("mean", [w], ["mean"], [((2, 1), "f32")],
                             {"dim": [np.int64(1)], "keepdim": np.bool_(True)})
    graph.outputs = [mean.output]
    text = str(graph)
    assert "%layer_norm = layer_norm(%x, _, _) {eps=1e-05, normalized_shape=[4]} : f32[2,4]" in text
    assert "{max=float('inf'), min=None}" in text
    assert "{approximate='tanh'}" in text
    # numpy scalars, which passes compute, print as the Python literals they equal.
    assert "{dim=[1], keepdim=True}" in text
    assert str(parse(text)) == text


def test_non_finite_floats_read_back_inside_lists():
    text = ("graph g(%x: f32[4]) {\n"
            "  %c = const dense<[float('nan'), float('-inf'), -0.0]> : f32[3]\n"
            "  %y = pad(%x) {pads=[1, 1], value=float('-inf')} : f32[6]\n"
            "  return %y\n}\n")
    graph = parse(text)
    data = graph.values["c"].data
    assert np.isnan(data[0]) and data[1] == -np.inf and np.signbit(data[2])
    assert graph.nodes[0].attrs["value"] == -np.inf
    assert str(graph) == text


def test_quoted_strings_with_separators_and_escapes_survive():
    graph = Graph()
    x = graph.add_input("x", (2,))
    tricky = "a, 'b' = {c}: [d] \"e\""
    graph.create_node("gelu", [x], ["y"], [((2,), "f32")], {"approximate": tricky})
    graph.outputs = [graph.values["y"]]
    # Not a valid gelu (verify refuses it): the test is about reading the string back.
    assert parse(str(graph), verify=False).nodes[0].attrs["approximate"] == tricky


def test_qparams_round_trip_per_tensor_and_per_channel():
    graph = Graph()
    x = graph.add_input("x", (1, 3))
    x.qparams = QParams(0.5, 3, bits=8, signed=False)
    w = graph.add_constant("w", np.eye(3, dtype=np.float32))
    w.qparams = QParams([0.1, 0.2, 0.3], [0, 0, 0], axis=0, narrow_range=True)
    graph.add_node("linear", [x, w])
    graph.outputs = [graph.nodes[0].output]
    text = str(graph)
    assert "%x: f32[1,3] q(bits=8, signed=False, axis=None, narrow_range=False, scale=[0.5], " \
           "zero_point=[3])" in text
    parsed = parse(text)
    assert parsed.values["w"].qparams == w.qparams and parsed.values["x"].qparams == x.qparams


# ---- parse errors name the line ------------------------------------------------

_HEADER = "graph g(%x: f32[2,3]) {\n"


@pytest.mark.parametrize("body, message", [
    ("  %y = relu(%x) : f33[2,3]\n  return %y\n}",
     r"line 2: bad type 'f33\[2,3\]'; expected e.g. f32\[1,3,224,224\]"),
    ("  %y = relu(%x) : f32[2,3*a]\n  return %y\n}", r"line 2: bad type 'f32\[2,3\*a\]': bad dimension"),
    ("  %y = relu(%x) : f32[2,3]\n  %z = add(%y, %w) : f32[2,3]\n  return %z\n}",
     r"line 3: %w is used before it is defined"),
    ("  %y = relu(%x) : f32[2,3]\n  return %nope\n}", r"line 3: %nope is used before it is defined"),
    ("  %y = relu(%x) : f32[2,3]\n  %y = relu(%x) : f32[2,3]\n  return %y\n}",
     r"line 3: value %y is defined twice"),
    ("  %x = relu(%x) : f32[2,3]\n  return %x\n}", r"line 2: value %x is defined twice"),
    ("  %a, %a = split(%x) {axis=1, sizes=[1, 2]} : f32[2,1], f32[2,2]\n  return %a\n}",
     r"line 2: value %a is defined twice"),
    ("  %c = const dense<[1.0]> : f32[1]\n  %c = const dense<[1.0]> : f32[1]\n  return %x\n}",
     r"line 3: value %c is defined twice"),
    ("  %y = relu(%x) : f32[2,3]\n  this is not IR\n  return %y\n}",
     r"line 3: cannot read 'this is not IR'"),
    ("  %y = relu(%x) {dim=oops} : f32[2,3]\n  return %y\n}", r"line 2: cannot read literal 'oops'"),
    ("  %y = relu(%x) {dim} : f32[2,3]\n  return %y\n}", r"line 2: expected key=value, got 'dim'"),
    ("  %a, %b = relu(%x) : f32[2,3]\n  return %a\n}", r"line 2: 2 outputs but 1 types"),
    ("  %c = const dense<[1.0, 2.0]> : f32[3]\n  return %x\n}",
     r"line 2: constant %c lists 2 numbers but its type f32\[3\] holds 3"),
    ("  %y = relu(%x) : f32[2,3] q(bits=8)\n  return %y\n}",
     r"line 2: bad quantization parameters q\(bits=8\): missing 'scale'"),
    ("  return %x\n}\n  %y = relu(%x) : f32[2,3]", r"line 4: text after the graph's closing '}'"),
])
def test_parse_errors_name_the_line(body, message):
    with pytest.raises(ParseError, match=message):
        parse(_HEADER + body)


@pytest.mark.parametrize("text, message", [
    ("", r"empty text"),
    ("graf g() {\n}", r"line 1: expected 'graph NAME\(%x: f32\[...\]\) \{'"),
    ("graph g(%x: f32[2], %x: f32[3]) {\n  return %x\n}", r"line 1: graph input %x is defined twice"),
    ("graph g(x f32[2]) {\n  return\n}", r"line 1: expected a graph input like '%x: f32\[1,3\]'"),
    ("graph g(%x: q32[2]) {\n  return %x\n}", r"line 1: bad type 'q32\[2\]'"),
])
def test_header_errors_name_line_one(text, message):
    with pytest.raises(ParseError, match=message):
        parse(text)


def test_parse_reads_names_with_colons_dots_and_slashes():
    text = ("graph g(%in:0: f32[2]) {\n  %blk/conv.1 = relu(%in:0) : f32[2]\n"
            "  return %blk/conv.1\n}\n")
    graph = parse(text)
    assert [v.name for v in graph.inputs] == ["in:0"] and graph.nodes[0].name == "blk/conv.1"
    assert str(graph) == text


GOOD = """graph g(%x: f32[2]) {
  %y = relu(%x) : f32[2]
  return %y
}"""


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("  return %y\n", ""), r"^line 3: the graph has no 'return' line; end it with "
                                         r"'return %output' before '\}'$"),
    (GOOD.replace("  return %y\n", "  return %y\n  return %x\n"),
     r"^line 4: a second 'return' after the 'return' on line 3; 'return' is the last line before"),
    (GOOD.replace("  return %y\n", "  return %y\n  %z = relu(%y) : f32[2]\n"),
     r"^line 4: '%z = relu\(%y\) : f32\[2\]' comes after the 'return' on line 3"),
    (GOOD[:-1], r"^line 3: the text ends without the graph's closing '\}'$"),
    (GOOD.replace("  return %y\n}", ""), r"^line 2: the text ends without a 'return' line and the "
                                         r"graph's closing '\}'$"),
    (GOOD.replace("%x: f32[2]", "%x: f32[2] q(bits=99, signed=True, axis=None, narrow_range=False, "
                                "scale=[0.5], zero_point=[0])"),
     r"^line 1: quantization parameters with bits=99; integer types hold 2 to 16 bits$"),
    (GOOD.replace("%x: f32[2]", "%x: f32[2] q(bits=8, signed=True, axis=None, narrow_range=False, "
                                "scale=[-0.5], zero_point=[0])"),
     r"^line 1: quantization scale \[-0\.5\] is not finite and positive$"),
    (GOOD.replace("%x: f32[2]", "%x: f32[2] q(bits=8, signed=True, axis=None, narrow_range=False, "
                                "scale=[float('nan')], zero_point=[0])"),
     r"^line 1: quantization scale \[nan\] is not finite and positive$"),
    (GOOD.replace("%x: f32[2]", "%x: f32[4294967296,4294967296]"),
     r"^line 1: type f32\[4294967296,4294967296\] holds 18446744073709551616 elements, more than "
     r"an int64 element count can hold$"),
    (GOOD.replace(": f32[2]\n  return", ": f32[3]\n  return"),
     r"(?s)^the text parses but does not describe a valid graph: .*%y \(relu\): outputs are recorded "
     r"as \[\(\(3,\), 'f32'\)\] but the op gives \[\(\(2,\), 'f32'\)\]"),
])
def test_bad_text_is_refused_with_the_line(text, message):
    with pytest.raises(ParseError, match=message):
        parse(text)


def test_line_numbers_count_blank_lines():
    text = "\n\ngraph g(%x: f32[2]) {\n\n  %y = frobnicate(%x) : f32[2]\n  return %y\n}\n"
    with pytest.raises(ParseError, match=r"(?s)^the text parses but does not describe a valid graph: "
                                         r".*unknown op 'frobnicate'"):
        parse(text)
    with pytest.raises(ParseError, match=r"^line 5: bad type 'f32\[2\] !!'"):
        parse(text.replace("frobnicate(%x) : f32[2]", "relu(%x) : f32[2] !!"))


def test_verify_false_reads_an_invalid_graph():
    graph = parse(GOOD.replace(": f32[2]\n  return", ": f32[3]\n  return"), verify=False)
    assert graph.values["y"].shape == (3,)
