"""What a MODEL argument of the CLI names, and loading it: a built-in model,
`path/to/file.py:factory`, where `factory()` returns `(module, example_inputs)`, or a graph
saved with `qc.save` / `qcompiler quantize -o model.qc` (float, fake-quant or integer). Shared
by the commands in `qcompiler.cli` and `qcompiler.cli_tvm`."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from qcompiler.ir import DTYPES, FLOAT_DTYPES, Graph
from qcompiler.ir.dims import shape_at
from qcompiler.ir.edit import graph_stage
from qcompiler.ir.ops import TORCH_DTYPES


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


def builtin_models() -> dict:
    from qcompiler.examples import models

    return {**models.BUILTIN_MODELS, "pretrained_mobilenet_v2": models.pretrained_mobilenet_v2}


@dataclass
class LoadedModel:
    description: str
    module: torch.nn.Module | None  # None for a saved graph
    example_inputs: tuple
    graph: Graph | None = None  # a saved graph (`.qc`): captured, maybe quantized or lowered

    @property
    def stage(self) -> str:
        """"float" for a module; a saved graph's stage ("float", "fake-quant", "integer")."""
        return "float" if self.graph is None else graph_stage(self.graph)

    def require_module(self, command: str) -> torch.nn.Module:
        if self.module is None:
            raise UsageError(f"{command} takes a torch model (a built-in name or "
                             f"path/to/file.py:factory), not a saved graph: {self.description}")
        return self.module


def load_model(spec: str) -> LoadedModel:
    """A built-in name, `path/to/file.py:factory` or a saved `.qc` graph -> the module (or
    graph) and example inputs."""
    if spec.lower().endswith(".qc"):
        return _saved_graph(spec)
    if spec.lower().endswith(".onnx"):
        return _load_onnx_model(spec)
    builtins = builtin_models()
    if spec in builtins:
        factory, description = builtins[spec], f"built-in model '{spec}'"
    elif ":" in spec or spec.endswith(".py"):
        factory, description = _factory_from_file(spec)
    else:
        raise UsageError(f"unknown model '{spec}'; built-in models are: {', '.join(sorted(builtins))}; "
                         "or give path/to/file.py:factory")
    try:
        result = factory()
    except FileNotFoundError as error:  # e.g. the pretrained weights package is not installed
        raise UsageError(f"{description}: {error}") from None
    except Exception as error:
        raise UsageError(f"{description} raised {type(error).__name__}: {error}"
                         f"{_user_frame(error)}") from None
    return LoadedModel(description, *_check_factory_result(result, description))


def _load_onnx_model(spec: str) -> LoadedModel:
    """An ONNX file: its imported graph (float, or fake-quant for a QDQ file), which the
    commands start from as from a saved graph, on seeded example inputs; a float one also as
    its torch module, for the commands that take one (report, demo)."""
    import qcompiler
    from qcompiler.errors import OnnxUnsupportedOpError

    if not Path(spec).is_file():
        raise UsageError(f"no such file: {spec}")
    try:
        graph = qcompiler.load_onnx(spec)
    except OnnxUnsupportedOpError:
        raise  # the model is readable; qcompiler cannot run it (exit 1)
    except qcompiler.LoadError as error:
        raise UsageError(str(error)) from None
    stage = graph_stage(graph)
    module = qcompiler.to_torch(graph).eval() if stage == "float" else None
    return LoadedModel(f"ONNX model {spec} ({stage} graph {graph.name})", module,
                       example_inputs(graph), graph)


def _factory_from_file(spec: str):
    path_text, _, factory_name = spec.rpartition(":") if ":" in spec else (spec, "", "")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"no such file: {path_text}")
    if not factory_name:
        raise UsageError(f"{spec}: name the factory function too, as {path_text}:FACTORY")
    module_spec = importlib.util.spec_from_file_location(f"qcompiler_user_{path.stem}", path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"{path_text}: not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as error:
        raise UsageError(f"importing {path_text} failed: {type(error).__name__}: {error}"
                         f"{_user_frame(error)}") from None
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        defined = sorted(name for name, value in vars(module).items()
                         if inspect.isfunction(value) and value.__module__ == module.__name__)
        raise UsageError(f"{path_text} has no function '{factory_name}' "
                         f"(it defines: {', '.join(defined) or 'no functions'})")
    return factory, f"{path_text}:{factory_name}"


def _user_frame(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


def _check_factory_result(result, description: str) -> tuple[torch.nn.Module, tuple]:
    expected = "(torch.nn.Module, tuple of example input tensors)"
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise UsageError(f"{description} must return {expected}, got {_kind(result)}")
    module, inputs = result
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{description} must return {expected}; its first item is {_kind(module)}")
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not (isinstance(inputs, tuple | list) and inputs
            and all(isinstance(x, torch.Tensor) for x in inputs)):
        raise UsageError(f"{description} must return {expected}; its second item is "
                         f"{_kind(inputs)}")
    training = [name or type(module).__name__ for name, m in module.named_modules() if m.training]
    if training:
        # qc.trace refuses a training-mode model (dropout, batch statistics); a factory is
        # meant for inference, so the CLI switches it and says so.
        print(f"qcompiler: note: {description} returned {type(module).__name__} in training mode "
              f"({', '.join(training[:3])}{', ...' if len(training) > 3 else ''}); switched it to "
              "eval mode (model.eval()): dropout off, batch norms use their running statistics",
              file=sys.stderr)
    return module.eval(), tuple(inputs)


def _kind(value) -> str:
    if isinstance(value, tuple | list):
        return f"a {type(value).__name__} of {len(value)}: ({', '.join(type(v).__name__ for v in value)})"
    return f"a {type(value).__name__}"


def _saved_graph(spec: str) -> LoadedModel:
    from qcompiler.errors import LoadError
    from qcompiler.ir.serialize import load

    if not Path(spec).is_file():
        raise UsageError(f"no such file: {spec}")
    try:
        graph = load(spec)
    except LoadError as error:
        raise UsageError(str(error)) from None
    return LoadedModel(f"saved {graph_stage(graph)} graph {spec} ({graph.name})", None,
                       example_inputs(graph), graph)


def example_inputs(graph: Graph, batch: int = 1) -> tuple:
    """Seeded inputs for a saved graph's inputs (a symbolic batch at `batch`): normal floats,
    integers over their type's range (small non-negative ones for i64 / i32, e.g. token ids)."""
    generator = torch.Generator().manual_seed(0)
    inputs = []
    for value in graph.inputs:
        shape = shape_at(value.shape, batch)
        if value.dtype in FLOAT_DTYPES:
            inputs.append(torch.randn(shape, generator=generator).to(TORCH_DTYPES[value.dtype]))
        elif value.dtype == "bool":
            inputs.append(torch.ones(shape, dtype=torch.bool))
        else:
            info = np.iinfo(DTYPES[value.dtype])
            low, high = (0, 2) if info.bits > 16 else (int(info.min), int(info.max) + 1)
            inputs.append(torch.randint(low, high, shape, generator=generator,
                                        dtype=TORCH_DTYPES[value.dtype]))
    return tuple(inputs)


def capture(loaded: LoadedModel, out: TextIO) -> Graph:
    import qcompiler

    if loaded.graph is not None:
        out.write(f"loaded {loaded.description}: {len(loaded.graph)} nodes, "
                  f"{len(loaded.graph.constants)} constants\n")
        return loaded.graph
    start = time.perf_counter()
    graph = qcompiler.trace(loaded.module, loaded.example_inputs)
    out.write(f"captured {loaded.description}: {len(graph)} nodes, {len(graph.constants)} constants "
              f"in {time.perf_counter() - start:.2f} s\n")
    return graph
