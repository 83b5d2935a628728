"""The pass manager: results and records, blame for broken IR, isolation, QC_PRINT_AFTER."""

import io
from dataclasses import dataclass

import numpy as np
import pytest

from qcompiler.errors import PassError, VerificationError
from qcompiler.ir import Graph, structurally_equal
from qcompiler.ir.pipeline import PassRecord, PassResult, Pipeline, pass_name


def _graph() -> Graph:
    graph = Graph("net")
    x = graph.add_input("x", (2, 3))
    w = graph.add_constant("w", np.eye(3, dtype=np.float32))
    y = graph.add_node("linear", [x, w], name="fc").output
    graph.outputs = [graph.add_node("relu", [y]).output]
    return graph.verify()


def keep(graph):
    return PassResult(graph, modified=False)


def add_sigmoid(graph):
    last = graph.outputs[0]
    graph.outputs = [graph.add_node("sigmoid", [last]).output]
    return PassResult(graph, modified=True, notes=["appended a sigmoid"])


def break_shapes(graph):
    graph.nodes[0].output.shape = (7, 7)
    return PassResult(graph, modified=True)


def crash(graph):
    graph.add_node("relu", [graph.inputs[0]], name="half_done")  # mutates, then fails
    return 1 / 0


def fail_politely(graph):
    graph.verify()
    raise VerificationError("node %fc (linear) needs constant weights; run fold_constants first")


def return_graph(graph):
    return graph


def return_result_without_graph(graph):
    return PassResult(None, modified=False)


@dataclass(frozen=True)
class ScaleWeights:
    """A pass with options: a frozen dataclass with __call__."""

    factor: float = 2.0

    def __call__(self, graph):
        weight = graph.values["w"]
        weight.data = weight.data * np.float32(self.factor)  # replace, never mutate in place
        return PassResult(graph, modified=self.factor != 1.0)


def test_pass_result_defaults_and_fields():
    graph = _graph()
    result = PassResult(graph, modified=False)
    assert result.graph is graph and result.modified is False and result.notes == []
    assert PassResult(graph, True).notes is not result.notes  # no shared mutable default


def test_run_returns_a_new_graph_and_leaves_the_input_alone():
    graph = _graph()
    before = str(graph)
    result = Pipeline([add_sigmoid, ScaleWeights(3.0)]).run(graph)
    assert str(graph) == before
    assert [n.op for n in result] == ["linear", "relu", "sigmoid"]
    np.testing.assert_array_equal(result.values["w"].data, 3 * np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(graph.values["w"].data, np.eye(3, dtype=np.float32))


def test_run_with_report_records_each_pass():
    _, records = Pipeline([keep, add_sigmoid, ScaleWeights(1.0)]).run_with_report(_graph())
    assert [(r.name, r.modified, r.notes) for r in records] == [
        ("keep", False, ()), ("add_sigmoid", True, ("appended a sigmoid",)), ("ScaleWeights", False, ())]
    assert all(isinstance(r, PassRecord) and r.seconds >= 0 for r in records)


def test_pass_names():
    assert pass_name(keep) == "keep" and pass_name(ScaleWeights()) == "ScaleWeights"
    assert repr(Pipeline([keep, ScaleWeights()])) == "Pipeline([keep, ScaleWeights])"


def test_verify_each_blames_the_pass_that_broke_the_ir_and_names_those_before():
    pipeline = Pipeline([keep, add_sigmoid, break_shapes, keep])
    with pytest.raises(PassError, match=r"^the IR is invalid after pass 'break_shapes' \(passes run before "
                                        r"it: keep, add_sigmoid\): graph net failed verification:\n  "
                                        r"node %fc \(linear\): outputs are recorded as \[\(\(7, 7\)"):
        pipeline.run(_graph())


def test_without_verify_each_a_broken_graph_goes_through():
    # The documented trade: no per-pass verification, no blame (used for speed).
    result = Pipeline([break_shapes], verify_each=False).run(_graph())
    with pytest.raises(VerificationError):
        result.verify()


def test_an_invalid_input_is_not_blamed_on_the_first_pass():
    graph = _graph()
    graph.nodes[1].attrs["slope"] = 0.1
    with pytest.raises(PassError, match=r"^the input graph is invalid, before any pass ran: graph net "
                                        r"failed verification:\n  node %relu \(relu\): op 'relu' has no"):
        Pipeline([keep]).run(graph)


def test_a_crashing_pass_is_reported_by_name_and_the_input_is_untouched():
    graph = _graph()
    before = str(graph)
    with pytest.raises(PassError, match=r"^pass 'crash' crashed \(passes run before it: add_sigmoid\): "
                                        r"ZeroDivisionError: division by zero") as info:
        Pipeline([add_sigmoid, crash]).run(graph)
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    assert str(graph) == before and "half_done" not in graph.values


def test_a_pass_raising_a_qcompiler_error_keeps_its_message():
    with pytest.raises(PassError, match=r"^pass 'fail_politely' failed \(passes run before it: none\): "
                                        r"node %fc \(linear\) needs constant weights; run fold_constants"):
        Pipeline([fail_politely]).run(_graph())


@pytest.mark.parametrize("bad_pass, message", [
    (return_graph, r"pass 'return_graph' returned Graph, not a PassResult"),
    (return_result_without_graph,
     r"pass 'return_result_without_graph' returned a PassResult whose graph is NoneType, not a Graph"),
])
def test_a_pass_returning_the_wrong_type_is_refused(bad_pass, message):
    with pytest.raises(PassError, match=message):
        Pipeline([bad_pass]).run(_graph())


@pytest.mark.parametrize("step", ["fold_batchnorm", None, 3])
def test_non_callable_steps_are_refused(step):
    with pytest.raises(TypeError, match=r"pipeline step .* is not a pass \(a callable taking a Graph\)"):
        Pipeline([keep, step])


def test_an_empty_pipeline_returns_an_equal_copy():
    graph = _graph()
    result = Pipeline([]).run(graph)
    assert result is not graph and structurally_equal(result, graph)


# ---- QC_PRINT_AFTER -----------------------------------------------------------------


def _printed_passes(text: str) -> list[str]:
    return [line.removeprefix("// IR after ") for line in text.splitlines() if line.startswith("// IR after")]


@pytest.mark.parametrize("setting, expected", [
    ("all", ["keep (unchanged)", "add_sigmoid (modified)", "ScaleWeights (unchanged)"]),
    ("changed", ["add_sigmoid (modified)"]),
    ("ScaleWeights", ["ScaleWeights (unchanged)"]),
    ("keep, add_sigmoid", ["keep (unchanged)", "add_sigmoid (modified)"]),
    ("", []),
])
def test_print_after_prints_the_ir_after_the_chosen_passes(monkeypatch, setting, expected):
    monkeypatch.setenv("QC_PRINT_AFTER", setting)
    stream = io.StringIO()
    result, _ = Pipeline([keep, add_sigmoid, ScaleWeights(1.0)]).run_with_report(_graph(), stream=stream)
    assert _printed_passes(stream.getvalue()) == expected
    if "add_sigmoid (modified)" in expected:
        assert "%sigmoid = sigmoid(%relu) : f32[2,3]" in stream.getvalue()


def test_print_after_writes_to_stderr_by_default(monkeypatch, capsys):
    monkeypatch.setenv("QC_PRINT_AFTER", "changed")
    result = Pipeline([keep, add_sigmoid]).run(_graph())
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"// IR after add_sigmoid (modified)\n{result}\n"


def test_print_after_is_off_when_unset(monkeypatch, capsys):
    monkeypatch.delenv("QC_PRINT_AFTER", raising=False)
    Pipeline([add_sigmoid]).run(_graph())
    assert capsys.readouterr().err == ""
