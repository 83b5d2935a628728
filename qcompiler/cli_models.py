"""What a MODEL argument of the CLI names, and loading it: a built-in model or
`path/to/file.py:factory`, where `factory()` returns `(module, example_inputs)`. Shared by
the commands in `qcompiler.cli` and `qcompiler.cli_tvm`."""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch

from qcompiler.ir import Graph


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit code 2."""


def builtin_models() -> dict:
    from qcompiler.examples import models

    return {**models.BUILTIN_MODELS, "pretrained_mobilenet_v2": models.pretrained_mobilenet_v2}


@dataclass
class LoadedModel:
    description: str
    module: torch.nn.Module
    example_inputs: tuple
    # A model read as a graph (an ONNX file): `capture` returns it instead of tracing `module`,
    # which is then the graph's torch module.
    graph: Graph | None = None


def load_model(spec: str) -> LoadedModel:
    """A built-in name or `path/to/file.py:factory` -> the module and its example inputs."""
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
    """An ONNX file: its imported graph, the graph's torch module, and seeded example inputs
    (batch 1 for a symbolic batch; standard normal floats, zeros for integer inputs)."""
    import qcompiler
    from qcompiler.ir.dims import shape_at
    from qcompiler.ir.ops import TORCH_DTYPES

    if not Path(spec).is_file():
        raise UsageError(f"no such file: {spec}")
    graph = qcompiler.load_onnx(spec)
    generator = torch.Generator().manual_seed(0)
    inputs = tuple(torch.randn(shape_at(v.shape, 1), generator=generator) if v.dtype == "f32"
                   else torch.zeros(shape_at(v.shape, 1), dtype=TORCH_DTYPES[v.dtype])
                   for v in graph.inputs)
    return LoadedModel(f"ONNX model {spec}", qcompiler.to_torch(graph).eval(), inputs, graph)


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


def capture(loaded: LoadedModel, out: TextIO) -> Graph:
    import qcompiler

    start = time.perf_counter()
    if loaded.graph is not None:
        out.write(f"imported {loaded.description}: {len(loaded.graph)} nodes, "
                  f"{len(loaded.graph.constants)} constants\n")
        return loaded.graph.copy()
    graph = qcompiler.trace(loaded.module, loaded.example_inputs)
    out.write(f"captured {loaded.description}: {len(graph)} nodes, {len(graph.constants)} constants "
              f"in {time.perf_counter() - start:.2f} s\n")
    return graph
