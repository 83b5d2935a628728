"""The PyTorch frontend: `trace(model, example_inputs)` captures a model into an IR `Graph`.

Steps:

1. Check the call: an `nn.Module` in eval mode and a tuple of tensors that binds to
   `forward`'s arguments.
2. `torch.export.export` gives the "training IR": high-level aten ops (conv2d,
   batch_norm, linear, layer_norm...) with the batch dimension symbolic (`dynamic.py`;
   static shapes with `dynamic_batch=False`). When it fails we run the model
   eagerly to tell wrong example inputs (eager fails too) from untraceable code.
3. If the graph holds a composite op listed in `capture_ops.DECOMPOSED_OPS`
   (scaled_dot_product_attention, einsum, pixel_shuffle...), or an in-place op whose
   effect reaches other tensors through a view, `run_decompositions` rewrites it with
   torch's own decomposition table (and functionalizes it). This re-traces the whole
   program (about 2 s for MobileNetV2), so it only runs when needed. Other in-place ops
   (`ReLU(inplace=True)`) simply become their functional IR op: torch's tracer already
   points later readers of the mutated tensor at the in-place node.
4. Convert node by node (`capture_convert.Converter` with `capture_ops.HANDLERS`).
   Parameters and buffers become constants named by their module path
   (`features.0.0.weight`); a node whose inputs are all constants (arange, slicing a
   position embedding, a causal mask) is evaluated once here and becomes a constant.
   Each result is checked against the shape and dtype torch recorded for the node.
5. `graph.verify()`.

Nodes are named after the module that made them (`%features.0.0` for that conv,
`%layers.0.add` for a functional add inside `layers.0`) and carry the user's
`file:line` as `node.source`.
"""

from __future__ import annotations

import inspect
import operator
import traceback
import warnings

import torch
from torch import fx, nn

from qcompiler.errors import CaptureError
from qcompiler.frontends.torch_export import dynamic
from qcompiler.frontends.torch_export.convert import (
    TORCH_PATHS,
    USER_FRAME,
    BatchDependentOpError,
    Converter,
    aten_name,
    short_path,
)
from qcompiler.frontends.torch_export.ops import DECOMPOSED_OPS
from qcompiler.ir import Graph
from qcompiler.ir.ops import TORCH_DTYPES, ir_dtype


def trace(model: nn.Module, example_inputs: tuple, *, dynamic_batch: bool | None = None) -> Graph:
    """Capture `model` (in eval mode) into an IR Graph.

    The batch dimension is symbolic, `f32[N,3,224,224]`, so the graph calibrates, simulates,
    lowers and runs at any batch size. The batch is dimension 0 of the first input with
    dimensions, and every input whose dimension 0 has the same size shares it (see
    `qcompiler.frontends.torch_export.dynamic`). A model whose code fixes the batch size is
    refused with a CaptureError naming the line. dynamic_batch=None (the default): a model
    with an op that takes sizes computed from the batch (the zero state of a recurrent layer,
    `torch.zeros(x.shape[0], hidden)`) is captured at the example inputs' batch size, with a
    warning naming the op; True refuses it instead (BatchDependentOpError); False captures
    every model at the example inputs' shapes (every shape static).
    """
    if not isinstance(model, nn.Module):
        raise CaptureError(f"qc.trace needs a torch.nn.Module, got {type(model).__name__}")
    inputs = _checked_inputs(model, example_inputs)
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        shown = ", ".join(training[:3]) + (", ..." if len(training) > 3 else "")
        raise CaptureError(f"{type(model).__name__} is in training mode (modules {shown}); call "
                           "model.eval() before qc.trace: dropout and batch_norm compute something "
                           "else in training mode")
    try:
        return _capture(model, inputs, dynamic_batch is not False)
    except (BatchDependentOpError, FixedBatchError) as error:
        if dynamic_batch:
            raise
        warnings.warn(f"qc.trace: {error}. Captured {type(model).__name__} at the example inputs' "
                      f"batch size, {inputs[0].shape[0] if inputs[0].dim() else 1}, instead of any "
                      "batch (dynamic_batch=False asks for that without this warning)",
                      stacklevel=2)
        return _capture(model, inputs, False)


def _capture(model: nn.Module, inputs: tuple, dynamic_batch: bool) -> Graph:
    program = _export(model, inputs, dynamic_batch)
    _check_outputs(model, program.call_spec.out_spec)
    program = _decomposed(program)
    return Converter(program, model).run().verify()


# ---- checking the call and exporting ---------------------------------------------------------


def _type_str(tensor: torch.Tensor) -> str:
    dtype = ir_dtype(tensor.dtype) if tensor.dtype in TORCH_DTYPES.values() else str(tensor.dtype)
    return f"{dtype}[{','.join(str(d) for d in tensor.shape)}]"


def _argument_names(model: nn.Module, count: int) -> list[str]:
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return [f"input {i}" for i in range(count)]
    names = []
    for i in range(count):
        if i < len(parameters) and parameters[i].kind in (parameters[i].POSITIONAL_ONLY,
                                                          parameters[i].POSITIONAL_OR_KEYWORD):
            names.append(parameters[i].name)
        else:
            names.append(f"input {i}")
    return names


def _checked_inputs(model: nn.Module, example_inputs) -> tuple:
    if isinstance(example_inputs, torch.Tensor):
        raise CaptureError("example_inputs must be a tuple of tensors; wrap a single input as (x,)")
    if not isinstance(example_inputs, (tuple, list)):
        raise CaptureError(f"example_inputs must be a tuple of tensors, got "
                           f"{type(example_inputs).__name__}")
    names = _argument_names(model, len(example_inputs))
    for name, x in zip(names, example_inputs, strict=True):
        if not isinstance(x, torch.Tensor):
            raise CaptureError(f"example input '{name}' is not a tensor but {type(x).__name__}; "
                               "qc.trace takes tensors only (bake other settings into the model)")
        if x.dtype not in TORCH_DTYPES.values():
            raise CaptureError(f"example input '{name}' has dtype {x.dtype}, which the IR lacks; "
                               f"IR dtypes: {', '.join(TORCH_DTYPES)}")
    try:
        inspect.signature(model.forward).bind(*example_inputs)
    except TypeError as error:
        raise CaptureError(f"{type(model).__name__}.forward cannot take {len(example_inputs)} "
                           f"example input(s): {error}") from None
    except ValueError:  # no introspectable signature (a C-implemented forward): let torch judge
        pass
    # torch.export treats inputs that share memory as one tensor, which would fuse two graph
    # inputs; give each its own copy.
    seen, distinct = set(), []
    for x in example_inputs:
        storage = x.untyped_storage().data_ptr()
        distinct.append(x.clone() if storage in seen else x)
        seen.add(storage)
    return tuple(distinct)


def _user_frame(error: BaseException) -> str:
    """' at file:line: `code`' for the innermost frame of `error` in the user's code, or ''."""
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if not f.filename.startswith(TORCH_PATHS) and f.filename != __file__]
    if not frames:  # torch.export names the user's call in its message
        match = USER_FRAME.search(str(error).split("The following call raised this error:")[-1])
        return f" at {short_path(match[1])}:{match[2]}" if match else ""
    frame = frames[-1]
    code = f": `{frame.line.strip()}`" if frame.line else ""
    return f" at {short_path(frame.filename)}:{frame.lineno}{code}"


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _export(model: nn.Module, inputs: tuple, dynamic_batch: bool) -> torch.export.ExportedProgram:
    export_inputs, dynamic_shapes = (dynamic.dynamic_export_arguments(inputs) if dynamic_batch
                                     else (inputs, None))

    def export():
        return torch.export.export(model, export_inputs, dynamic_shapes=dynamic_shapes)

    try:
        with warnings.catch_warnings():
            # nn.LSTM / GRU / RNN re-assign their weight list in forward; torch.export warns
            # about it, but the weights are parameters it lifts all the same.
            warnings.filterwarnings("ignore", message=r"The tensor attributes self\._flat_weights")
            return export()
    except Exception as export_error:
        if dynamic_shapes is not None and dynamic.is_constraint_violation(export_error):
            raise _batch_error(model, export, export_error) from None
        try:
            with torch.no_grad():
                model(*inputs)
        except Exception as eager_error:
            described = ", ".join(f"{name}: {_type_str(x)}" for name, x in
                                  zip(_argument_names(model, len(inputs)), inputs, strict=True))
            raise CaptureError(
                f"{type(model).__name__} cannot run on the example inputs ({described}): "
                f"{_first_line(eager_error)}{_user_frame(eager_error)}. Check their shapes and "
                "dtypes against what forward expects") from eager_error
        raise CaptureError(
            f"torch.export could not trace {type(model).__name__}: {_first_line(export_error)}"
            f"{_user_frame(export_error)}. This usually means data-dependent control flow (a "
            "Python `if` on tensor values), which a static graph cannot hold: remove the "
            "data-dependent branch (decide it from shapes or constructor arguments). torch.cond "
            "would make the model exportable, but the IR has no control flow, so qc.trace would "
            "still refuse it") from export_error


class FixedBatchError(CaptureError):
    """The model's code fixes the batch size (torch.export found the batch specialized)."""


def _batch_error(model: nn.Module, export, error: BaseException) -> CaptureError:
    frame = dynamic.specialization_site(export, TORCH_PATHS)
    site = " (torch.export does not say where)"
    if frame is not None:
        code = f": `{frame.line.strip()}`" if frame.line else ""
        site = f" at {short_path(frame.filename)}:{frame.lineno}{code}"
    pinned = dynamic.pinned_value(error)
    fixed = f" to {pinned}" if pinned is not None else ""
    return FixedBatchError(
        f"{type(model).__name__} cannot take any batch size: its code fixes the batch "
        f"dimension{fixed}{site}. Write the batch as -1 "
        "or x.shape[0] (x.view(x.shape[0], -1), not x.view(8, -1)) and drop branches on the "
        "batch size, or capture at the example inputs' batch size only with "
        "qc.trace(model, inputs, dynamic_batch=False)")


def _check_outputs(model: nn.Module, spec, path: str = "the output") -> None:
    """Outputs must be tensors, or tuples / lists of them (flattened in order into the graph
    outputs; named tuples such as max's (values, indices) keep their order): a dict's keys
    (or a dataclass's field names) would be lost without a word."""
    if spec is None or spec.type is None or issubclass(spec.type, (tuple, list)):
        for index, child in enumerate(spec.children() if spec is not None else []):
            _check_outputs(model, child, f"{path}[{index}]")
        return
    kind = spec.type.__name__
    keys = f" with keys {list(spec.context)}" if isinstance(spec.context, (list, tuple)) else ""
    raise CaptureError(
        f"{type(model).__name__}.forward returns a {kind}{keys} as {path}; the IR's outputs are "
        "a flat list of tensors, so the names would be lost. Return a tuple in a fixed order "
        "(e.g. wrap the model: `return out['logits'], out['hidden']`)")


def _is_view(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return isinstance(node.args[0], fx.Node) and _is_view(node.args[0])
    if not isinstance(node.target, torch._ops.OpOverload):
        return False
    return any(r.alias_info is not None and not r.alias_info.is_write
               for r in node.target._schema.returns)


def _mutates_through_view(graph: fx.Graph) -> bool:
    """True if an in-place op writes a view, or a tensor that also has views (aliasing we cannot
    follow by rebinding names)."""
    for node in graph.nodes:
        if (node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
                and node.target._schema.is_mutable and node.args and isinstance(node.args[0], fx.Node)):
            base = node.args[0]
            if _is_view(base) or any(_is_view(user) for user in base.users if user is not node):
                return True
    return False


def _decomposed(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    present = {aten_name(n.target) for n in program.graph.nodes
               if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)}
    if not present & set(DECOMPOSED_OPS) and not _mutates_through_view(program.graph):
        return program
    defaults = torch.export.default_decompositions()
    table = {op: defaults[op] for op in defaults if aten_name(op) in DECOMPOSED_OPS}
    return program.run_decompositions(table)
