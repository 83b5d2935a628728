"""The node-by-node conversion of an ExportedProgram into an IR Graph (step 4 of
`qcompiler.frontends.torch_export.capture`).

`Converter` walks the exported graph once. Parameters and buffers are held as
capture-time tensors (`Folded`) and become IR constants, named by their module
path, only when an IR node uses them; a node whose inputs are all such tensors is
evaluated here. Other nodes go to the handler table of `qcompiler.frontends.torch_export.ops`,
for which the Converter is the `ctx`: it emits IR nodes named after the module
that made them and tagged with the user's source line, and checks every result
against the shape and dtype torch recorded for the node.
"""

from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.export.graph_signature import OutputKind

from qcompiler.errors import CaptureError, UnsupportedOpError, VerificationError
from qcompiler.frontends.torch_export.dynamic import ir_shape
from qcompiler.frontends.torch_export.hints import unsupported_hint
from qcompiler.frontends.torch_export.ops import HANDLERS, IDENTITY_OPS
from qcompiler.ir import Graph, Value
from qcompiler.ir.ops import TORCH_DTYPES, ir_dtype

# Stack frames from these are torch's, not the user's (fx runs generated code as <eval_with_key>).
TORCH_PATHS = (os.path.dirname(torch.__file__), "<eval_with_key>")
# One frame of a stack trace as torch and Python print it: path, line, and the code line.
USER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in [^\n]*\n?([^\n]*)')
_UNPRINTABLE = re.compile(r"[^A-Za-z0-9_.:/\-]")  # characters IR text names cannot hold


def aten_name(target) -> str:
    """`relu_` for torch.ops.aten.relu_.default."""
    return target._overloadpacket.__name__


def short_path(path: str) -> str:
    """A path relative to the working directory when it lies below it."""
    relative = os.path.relpath(path) if os.path.isabs(path) else path
    return path if relative.startswith("..") else relative


# aten ops whose size arguments may depend on the batch: they read their output shape from
# torch's record (`ctx.out_shape`), where the batch is symbolic.
SIZE_TAKING_OPS = frozenset({"view", "reshape", "_unsafe_view", "unflatten"})
# torch.export's runtime checks on sizes (by aten name prefix): no IR node.
SIZE_ASSERTIONS = ("_assert_scalar", "sym_constrain_range", "_assert_tensor_metadata")


class BatchDependentOpError(UnsupportedOpError):
    """An op with no IR form at a symbolic batch size: sizes computed from the batch (the zero
    state `torch.zeros(x.shape[0], hidden)` of a recurrent layer), slicing or concatenating
    along the batch. `qc.trace` then captures at the example inputs' batch size (with a
    warning), or refuses with dynamic_batch=True."""


@dataclass(frozen=True)
class Size:
    """A size computed from the symbolic batch (x.shape[0], or arithmetic on it) during capture."""

    value: object


@dataclass
class Folded:
    """A tensor known at capture time: a parameter, a buffer, or a node computed from them only.
    It becomes an IR constant (`value`) the first time an IR node uses it."""

    tensor: torch.Tensor
    name: str
    value: Value | None = None


class Converter:
    """Walks an ExportedProgram's graph once; also the `ctx` that capture_ops handlers use."""

    def __init__(self, program: torch.export.ExportedProgram, model: nn.Module):
        self.program = program
        self.modules = dict(model.named_modules())
        self.graph = Graph(type(model).__name__)
        self.env: dict[fx.Node, object] = {}
        self.node: fx.Node | None = None
        self.aten_name = ""
        self._base: str | None = None

    def run(self) -> Graph:
        signature = self.program.graph_signature
        lifted = {**signature.inputs_to_parameters, **signature.inputs_to_buffers,
                  **signature.inputs_to_lifted_tensor_constants}
        self._refuse_control_flow()
        for node in self.program.graph.nodes:
            self.node, self._base = node, None
            if node.op == "placeholder" and node.name in lifted:
                fqn = lifted[node.name]
                self.env[node] = Folded(self._lifted_tensor(fqn), _UNPRINTABLE.sub("_", fqn))
            elif node.op == "placeholder" and node.name in signature.user_inputs:
                val = node.meta["val"]
                self.env[node] = self.graph.add_input(node.name, self.ir_shape(val.shape),
                                                      ir_dtype(val.dtype))
            elif node.op == "call_function":
                self.env[node] = self._convert(node)
            elif node.op == "output":
                self._set_outputs(node)
            elif node.op == "placeholder":
                raise CaptureError(f"forward uses a non-tensor object ({node.name}: "
                                   f"{type(node.meta.get('val')).__name__}) that torch.export lifted as "
                                   "an input; qc.trace supports tensors only: create it in __init__ "
                                   "as a tensor or buffer")
            else:
                raise UnsupportedOpError(f"{self._where()}: torch.export produced a '{node.op}' node "
                                         f"({node.target}), which qc.trace cannot convert")
        self.graph.remove_unused_constants()
        return self.graph

    def _refuse_control_flow(self) -> None:
        """torch.cond, while_loop, ...: checked up front, before their predicate's ops (sum, gt)
        would be reported as unsupported instead."""
        for node in self.program.graph.nodes:
            if node.op == "call_function" and isinstance(node.target, torch._ops.HigherOrderOperator):
                self.node, self.aten_name = node, node.target.name()
                raise UnsupportedOpError(f"{self._where()}: {node.target.name()} is control flow, "
                                         "which the IR cannot hold (it is a static dataflow graph); "
                                         "remove the data-dependent branch from the model")

    def _lifted_tensor(self, fqn: str) -> torch.Tensor:
        tensor = self.program.state_dict.get(fqn)
        if tensor is None:
            tensor = self.program.constants.get(fqn)
        if not isinstance(tensor, torch.Tensor):
            raise CaptureError(f"parameter or buffer '{fqn}' is not a tensor in the exported program")
        return tensor.detach()

    def _set_outputs(self, node: fx.Node) -> None:
        specs = self.program.graph_signature.output_specs
        for index, (spec, arg) in enumerate(zip(specs, node.args[0], strict=True)):
            if spec.kind != OutputKind.USER_OUTPUT:
                continue  # buffer/input mutations: the IR graph is a pure function
            result = self.env[arg] if isinstance(arg, fx.Node) else arg
            if not isinstance(result, (Value, Folded)):
                raise CaptureError(f"output {index} of the model is {type(result).__name__}, not a "
                                   "tensor; qc.trace needs a model that returns tensors")
            self.graph.outputs.append(self._as_value(result))

    # ---- one node -----------------------------------------------------------------------------

    def _convert(self, node: fx.Node):
        target = node.target
        if target is operator.getitem:
            container, index = node.args
            return self.env[container][index]
        self.aten_name = getattr(target, "__name__", "op")
        if isinstance(node.meta.get("val"), (torch.SymInt, torch.SymFloat, torch.SymBool)):
            # x.shape[0] and arithmetic on it: the handlers that take sizes read the shapes torch
            # recorded for their own outputs, so nothing needs the number itself.
            return Size(node.meta["val"])
        if getattr(target, "__name__", "").startswith(SIZE_ASSERTIONS):
            return None  # export's checks on sizes: nothing to compute
        if not isinstance(target, torch._ops.OpOverload):
            raise UnsupportedOpError(f"{self._where()}: {target} is not an aten op; qc.trace "
                                     "converts aten ops only")
        name = aten_name(target)
        in_place = target._schema.is_mutable and name.endswith("_")
        self.aten_name = name[:-1] if in_place else name
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        if any(isinstance(leaf, Size) for leaf in leaves) and self.aten_name not in SIZE_TAKING_OPS:
            self.batch_dependent("its arguments depend on the batch size (x.shape[0] or a size "
                                 "computed from it), and only reshapes may take those in the IR, "
                                 "whose other sizes are fixed")
        if (not any(isinstance(leaf, Value) for leaf in leaves)
                and torch.Tag.nondeterministic_seeded not in target.tags):
            result = self._fold(target, args, kwargs, in_place)
        else:
            handler = HANDLERS.get(self.aten_name)
            if handler is None:
                self.unsupported(f"the IR has no mapping for it; "
                                 f"{unsupported_hint(self.aten_name, HANDLERS)}")
            result = handler(self, _bind(target, args, kwargs))
        self._check(node, result)
        if in_place:  # defensive: torch already points later readers at this node
            self.env[node.args[0]] = result
        return result

    def _fold(self, target, args, kwargs, in_place: bool):
        folded = [leaf for leaf in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(leaf, Folded)]
        if self.aten_name in IDENTITY_OPS and not _bind(target, args, kwargs).get("train"):
            return args[0]
        name = f"{folded[0].name}.{self.aten_name}" if folded else self.base_name

        def unwrap(x):
            return x.tensor if isinstance(x, Folded) else x

        args, kwargs = torch.utils._pytree.tree_map(unwrap, (args, kwargs))
        if in_place:  # never write into the model's own parameters
            args = (args[0].clone(), *args[1:])
        with torch.no_grad():
            result = target(*args, **kwargs)
        if isinstance(result, torch.Tensor):
            return Folded(result, name)
        if isinstance(result, (list, tuple)):
            return tuple(Folded(r, f"{name}.{i}") if isinstance(r, torch.Tensor) else r
                         for i, r in enumerate(result))
        return result

    def _check(self, node: fx.Node, result) -> None:
        """The converted result must have the shape and dtype torch recorded for the node."""
        expected = node.meta.get("val")
        pairs = zip(expected, result, strict=False) if isinstance(expected, (list, tuple)) \
            else [(expected, result)]
        for want, got in pairs:
            if not isinstance(want, torch.Tensor) or got is None:
                continue
            want_type = (self.ir_shape(want.shape), ir_dtype(want.dtype))
            have_type = (self.shape(got), self.dtype(got))
            if want_type != have_type:
                raise CaptureError(f"{self._where()}: converted to {_type_text(*have_type)} but "
                                   f"torch.export recorded {_type_text(*want_type)}; this is a bug "
                                   f"in qc.trace's mapping of aten.{self.aten_name}")

    # ---- names and sources ----------------------------------------------------------------------

    @property
    def base_name(self) -> str:
        """The module path of the node; functional ops get `.op` appended (`layers.0.add`)."""
        if self._base is None:
            stack = self.node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else ""
            module = self.modules.get(path)
            is_torch_leaf = (path and module is not None and type(module).__module__.startswith("torch.nn")
                             and next(module.children(), None) is None)
            base = path if is_torch_leaf else f"{path}.{self.aten_name}".lstrip(".")
            self._base = _UNPRINTABLE.sub("_", base)
        return self._base

    def source(self) -> tuple[str, str]:
        """(file:line, code) of the innermost stack frame outside torch, or ('', '')."""
        frames = USER_FRAME.findall(self.node.meta.get("stack_trace") or "")
        for path, line, code in reversed(frames):
            if not path.startswith(TORCH_PATHS):
                code = "" if code.strip().startswith("File ") else code.strip()
                return f"{short_path(path)}:{line}", code
        return "", ""

    def _where(self) -> str:
        location, code = self.source()
        where = f" at {location}" if location else ""
        code = f": `{code}`" if code else ""
        return f"node %{self.base_name}{where}{code}"

    # ---- the interface capture_ops handlers use ---------------------------------------------------

    def unsupported(self, why: str):
        target = self.node.target
        raise UnsupportedOpError(f"unsupported op aten.{target._overloadpacket.__name__}."
                                 f"{target._overloadname} ({self._where()}): {why}")

    def batch_dependent(self, why: str):
        """Refuse the current node because it needs a fixed batch size (`qc.trace` then
        captures at the example inputs' batch, or refuses with dynamic_batch=True)."""
        target = self.node.target
        raise BatchDependentOpError(f"unsupported op aten.{target._overloadpacket.__name__}."
                                    f"{target._overloadname} ({self._where()}) at any batch size: "
                                    f"{why}")

    def emit(self, op: str, inputs: list, attrs: dict | None = None, part: str | None = None):
        """Append an IR node for the current aten node; returns its output (a tuple if several)."""
        values = [self._as_value(x) for x in inputs]
        name = self.base_name if part is None else f"{self.base_name}.{part}"
        try:
            node = self.graph.add_node(op, values, attrs, name=name, source=self.source()[0])
        except VerificationError as error:
            self.unsupported(f"it maps to IR op '{op}', which rejects these arguments ({error})")
        return node.output if len(node.outputs) == 1 else tuple(node.outputs)

    def constant(self, part: str, tensor: torch.Tensor) -> Value:
        return self.graph.add_constant(f"{self.base_name}.{part}", tensor.numpy(),
                                       dtype=ir_dtype(tensor.dtype))

    def _as_value(self, x) -> Value | None:
        if x is None or isinstance(x, Value):
            return x
        if isinstance(x, Folded):
            if x.value is None:
                tensor = x.tensor.detach().contiguous()
                x.value = self.graph.add_constant(x.name, tensor.numpy().copy(),
                                                  dtype=ir_dtype(tensor.dtype))
            return x.value
        if isinstance(x, (bool, int, float)):  # a Python scalar operand: a 0-d constant
            return self.graph.add_constant(f"{self.base_name}.scalar",
                                           torch.tensor(x, dtype=TORCH_DTYPES[self.out_dtype]).numpy())
        self.unsupported(f"an input is a {type(x).__name__}, not a tensor")

    def shape(self, x) -> tuple:
        return x.shape if isinstance(x, Value) else tuple(x.tensor.shape)

    def dtype(self, x) -> str:
        return x.dtype if isinstance(x, Value) else ir_dtype(x.tensor.dtype)

    def torch_dtype(self, x) -> torch.dtype:
        return TORCH_DTYPES[self.dtype(x)]

    def is_constant(self, x) -> bool:
        return isinstance(x, Folded) or (isinstance(x, Value) and x.is_constant)

    def constant_data(self, x) -> torch.Tensor:
        return x.tensor if isinstance(x, Folded) else torch.from_numpy(x.data)

    def ir_shape(self, shape) -> tuple:
        """A shape torch recorded (ints and symbolic ints) as IR dimensions."""
        try:
            return ir_shape(shape, self._where())
        except ValueError as error:
            raise BatchDependentOpError(f"{error}; the graph needs a fixed batch size") from None

    @property
    def out_shapes(self) -> list[tuple]:
        val = self.node.meta["val"]
        return [self.ir_shape(v.shape) for v in (val if isinstance(val, (list, tuple)) else [val])]

    @property
    def out_shape(self) -> tuple:
        return self.out_shapes[0]

    @property
    def out_dtype(self) -> str:
        val = self.node.meta["val"]
        return ir_dtype((val[0] if isinstance(val, (list, tuple)) else val).dtype)


def _type_text(shape: tuple, dtype: str) -> str:
    return f"{dtype}[{','.join(str(d) for d in shape)}]"


def _bind(target, args: tuple, kwargs: dict) -> dict:
    """The op's arguments by schema name, defaults filled in."""
    bound = {}
    for index, argument in enumerate(target._schema.arguments):
        if index < len(args) and not argument.kwarg_only:
            bound[argument.name] = args[index]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
        else:
            bound[argument.name] = None
    return bound
