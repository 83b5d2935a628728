"""Small ONNX models built with onnx.helper, shared by the import tests: one node (or a few)
with random float inputs and initializers, and a helper running a model in onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

_TYPES = {np.float32: TensorProto.FLOAT, np.int64: TensorProto.INT64, np.bool_: TensorProto.BOOL,
          np.int32: TensorProto.INT32}


def model_of(nodes, inputs: dict, outputs: list[str], initializers: dict | None = None,
             opset: int = 17, batch_param: bool = True) -> onnx.ModelProto:
    """A model of `nodes`; `inputs` maps names to (shape, numpy dtype); the outputs' types are
    left to shape inference. The leading input dimension is the dim_param "N" (batch_param)."""
    graph_inputs = []
    for name, (shape, dtype) in inputs.items():
        dims = ["N", *shape[1:]] if batch_param else list(shape)
        graph_inputs.append(helper.make_tensor_value_info(name, _TYPES[dtype], dims))
    graph_outputs = [helper.make_empty_tensor_value_info(name) for name in outputs]
    tensors = [numpy_helper.from_array(np.asarray(array), name)
               for name, array in (initializers or {}).items()]
    graph = helper.make_graph(nodes, "case", graph_inputs, graph_outputs, tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset <= 17 else 9
    if not outputs:  # the caller adds them (a malformed model may not pass inference)
        return model
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    for output in model.graph.output:
        output.CopyFrom(known[output.name])
    return model


def ort_run(model_or_path, feeds: dict, *, optimize: bool = False) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = (model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto)
              else str(model_or_path))
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def random(shape, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)
