"""AdaRound: replace round-to-nearest of each layer's weights with learned up/down
rounding that minimises the layer's output error on calibration data.

    %w.fq = fake_quant(%w, %s, %zp)                  %w.fq = fake_quant(%w.adarounded, %s, %zp)
    %y = conv2d(%x.fq, %w.fq, %b)          ->        %y = conv2d(%x.fq, %w.fq, %b)

(Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization";
the arithmetic is in `qcompiler.numerics.adaround`.) At 4 bits round-to-nearest
is far from the best choice of grid points for the layer's *output*; AdaRound
optimises a soft rounding variable per weight against the layer's reconstruction
error, annealing a regulariser that drives it to a hard 0/1 choice.

How the result lives in the IR: the weight constant is replaced by the chosen
grid values themselves, scale * (q - zero_point) (`<weight>.adarounded`). The
fake_quant in front of the layer and its qparams are unchanged, and fake-quantizing
a grid value gives the same value back (q * s * (1/s) rounds to q for |q| <
2^15), so the fake-quant graph, integer lowering and ONNX export all use exactly
the AdaRound integers with no new op. The float weights are gone from the
result: running it with the fake_quants bypassed uses the rounded weights.

Layers are processed in graph order. Each layer's inputs come from running the
whole calibration set through the graph node by node, as it stands: with
`inputs="quantized"` (the default) the layer is fitted to the inputs the quantized
network produces, with every earlier layer already AdaRounded, against the float
network's output (the paper's asymmetric reconstruction, sec. 4, which lets a
layer compensate errors made before it); `inputs="float"` fits to the float
network's inputs (symmetric; half the memory and compute). A ReLU or ReLU6 that
is the layer's only user is included in the objective (eq. 25). Each layer uses
`rows` im2col rows sampled from all calibration examples and `iterations` Adam
steps of `batch_rows` rows. Only the first calibration batches holding
`max_examples` examples (default 64) are used: their activations are held in
memory, and a few thousand rows per layer already come from many images.

Measured on a shared, busy 2-core machine with one torch thread (two threads were
several times slower there: the per-step tensors are small): the digits CNN (6
layers, 512 images with max_examples=None) in 10 s, W4 per-tensor test accuracy
77.7% -> 97.5% (96.1% with the default 64 images; FP32 97.5%); pretrained
MobileNetV2 (53 layers, 16 photo crops, defaults) in 5 min, W4A8 per-channel
top-1 agreement with FP32 on 32 other crops 9% -> 75%. With 32 crops, quantize +
AdaRound peaked at 1.8 GB resident.

Requires: a calibrated fake-quant graph (`qc.quantize`, or `insert_fake_quant` then
`calibrate`) and calibration data. Preserves: shapes, dtypes, node names, every
qparams and every bias (run `correct_bias` after it if wanted; AdaRound already
removes most of the mean error). Changes the function (that is the point).
Skipped, with a note: conv_transpose2d, weights quantized per channel on an axis
other than 0, and weights shared by several layers or read by other nodes.
Known limits: activation ranges are not re-calibrated; memory holds the live
activations of all calibration batches twice (float and quantized); a layer with
fewer independent rows than weights per output channel (a classifier fed one row
per image) can fit the calibration set rather than the data.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from qcompiler.errors import QuantizationError
from qcompiler.ir import Graph, Node
from qcompiler.ir.edit import layer_bias, remove_if_unused
from qcompiler.ir.evaluate import Evaluator, graph_inputs, is_fake_quant
from qcompiler.ir.ops import FUSABLE_ACTIVATIONS, WEIGHTED_OPS
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.adaround import (
    AdaRoundSettings,
    nearest_integers,
    optimize_rounding,
    reconstruction_error,
    sample_rows,
)
from qcompiler.numerics.quant import dequantize, quant_range
from qcompiler.quantization.quantizers import fake_quant_nodes, require_calibrated


@dataclass(frozen=True, eq=False)  # eq=False: calibration_data holds tensors
class RoundAdaptive:
    """The configured AdaRound pass (see the module docstring)."""

    calibration_data: Iterable | None = None
    iterations: int = 500
    rows: int = 2048
    # Activations of all these examples stay in memory, twice (float and quantized).
    max_examples: int | None = 64
    batch_rows: int = 256
    regularization: float = 0.01
    learning_rate: float = 1e-2
    inputs: str = "quantized"
    seed: int = 0
    progress: bool | None = None

    name: ClassVar[str] = "round_adaptive"
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    def __post_init__(self):
        if self.inputs not in ("quantized", "float"):
            raise QuantizationError(f"round_adaptive(inputs={self.inputs!r}): choose 'quantized' "
                                    "(asymmetric reconstruction, the paper's) or 'float'")
        if self.rows < 1 or (self.max_examples is not None and self.max_examples < 1):
            raise QuantizationError(f"round_adaptive(rows={self.rows}, max_examples={self.max_examples}): "
                                    "both must be >= 1 (max_examples may be None: all)")
        try:
            self.settings()
        except ValueError as error:
            raise QuantizationError(f"round_adaptive: {error}") from None

    def settings(self) -> AdaRoundSettings:
        return AdaRoundSettings(iterations=self.iterations, batch_rows=self.batch_rows,
                                regularization=self.regularization, learning_rate=self.learning_rate)

    def first_batches(self, graph: Graph) -> list[list[torch.Tensor]]:
        """The first calibration batches that hold at least `max_examples` examples (whole
        batches: the graph's input shapes fix the batch size)."""
        batches, examples = [], 0
        for index, batch in enumerate(self.calibration_data):
            if self.max_examples is not None and examples >= self.max_examples:
                break
            batches.append(graph_inputs(batch, graph, index))
            examples += int(batches[-1][0].shape[0]) if batches[-1][0].dim() else 1
        return batches

    def __call__(self, graph: Graph) -> PassResult:
        if self.calibration_data is None:
            raise QuantizationError(
                "round_adaptive needs calibration_data (batches shaped as the graph inputs): "
                "AdaRound fits each layer's rounding to its outputs on real inputs; for data-free "
                "quantization keep round-to-nearest")
        if not fake_quant_nodes(graph):
            raise QuantizationError(
                f"graph {graph.name} is not quantized (it has no fake_quant nodes): run "
                "qc.quantize (or insert_fake_quant then calibrate) before round_adaptive")
        require_calibrated(graph, "round_adaptive")
        notes: list[str] = []
        layers = [node for node in graph if _adaroundable(graph, node, notes)]
        if not layers:
            notes.insert(0, "no layer with a fake-quantized constant weight to round")
            return PassResult(graph, False, notes)
        batches = self.first_batches(graph)
        if not batches:
            raise QuantizationError("round_adaptive: calibration_data is empty; give at least one batch")
        changed = _round_layers(graph, layers, batches, self, notes)
        notes.insert(0, f"AdaRound changed the weights of {changed} of {len(layers)} layer(s)")
        return PassResult(graph, changed > 0, notes)


def round_adaptive(graph: Graph | None = None, /, **options):
    """`round_adaptive(calibration_data=batches, iterations=..., ...)` returns the configured
    pass; `round_adaptive(graph, calibration_data=...)` runs it (-> PassResult)."""
    configured = RoundAdaptive(**options)
    return configured if graph is None else configured(graph)


round_adaptive.in_place = True  # as the configured pass it runs


# ---- which layers ---------------------------------------------------------------------------


def _adaroundable(graph: Graph, layer: Node, notes: list[str]) -> bool:
    if layer.op not in WEIGHTED_OPS or len(layer.inputs) < 2:
        return False
    fq = layer.inputs[1].producer
    if fq is None or fq.op != "fake_quant" or not fq.inputs[0].is_constant:
        return False
    weight = fq.inputs[0]
    why = None
    if layer.op == "conv_transpose2d":
        why = "conv_transpose2d is not handled"
    elif fq.attrs.get("axis") not in (None, 0):
        why = f"its weight is quantized per channel on axis {fq.attrs.get('axis')}, not 0"
    elif len(fq.output.users) != 1 or len(weight.users) != 1 or weight in graph.outputs:
        why = f"its weight %{weight.name} is shared with other nodes"
    elif layer_bias(layer) is not None and not layer_bias(layer).is_constant:
        why = "its bias is not a constant"
    if why is not None:
        notes.append(f"%{layer.name} kept round-to-nearest: {why}")
        return False
    return True


def _activation(layer: Node):
    """The ReLU / clamp that is the only user of the layer's output (the activation fused into
    the layer's quantization), as a torch function."""
    users = layer.output.users
    if len(users) != 1 or users[0].op not in FUSABLE_ACTIVATIONS:
        return None
    if users[0].op == "relu":
        return F.relu
    low, high = users[0].attrs.get("min"), users[0].attrs.get("max")
    return lambda y: torch.clamp(y, low, high)


# ---- running the calibration set ---------------------------------------------------------------


def _round_layers(graph: Graph, layers: list[Node], batches, options: RoundAdaptive,
                  notes: list[str]) -> int:
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(options.seed)
    settings = options.settings()
    # The whole calibration set runs through the graph node by node: as the float network
    # (fake quants bypassed) and, for inputs="quantized", as the quantized one.
    float_run = Evaluator(graph, bypass=is_fake_quant)
    quantized_run = Evaluator(graph) if options.inputs == "quantized" else None
    runs = [r for r in (float_run, quantized_run) if r is not None]
    nodes = graph.nodes
    last_uses = float_run.last_uses(nodes)
    for run in runs:
        run.bind(batches)
    targets = {id(layer) for layer in layers}
    progress = sys.stderr.isatty() if options.progress is None else options.progress
    changed = 0
    with tqdm(total=len(layers), desc="adaround", disable=not progress) as bar:
        for index, node in enumerate(nodes):
            if id(node) in targets:
                bar.set_postfix_str(node.name)
                with torch.enable_grad():  # even when the caller runs without gradients
                    changed += _round_layer(graph, node, float_run, quantized_run or float_run,
                                            options.rows, settings, generator, notes)
                if quantized_run is not None:  # its weight input now holds the new grid values
                    quantized_run.step(node.inputs[1].producer)
                bar.update()
            for run in runs:
                run.step(node)
                run.free(last_uses.get(index, ()))
    return changed


def _round_layer(graph: Graph, layer: Node, float_run: Evaluator, quantized_run: Evaluator, rows: int,
                 settings: AdaRoundSettings, generator: torch.Generator, notes: list[str]) -> int:
    """AdaRound one layer and replace its weight constant; 1 if the weights changed."""
    fq = layer.inputs[1].producer
    weight = fq.inputs[0]
    scale, zero_point = fq.inputs[1].data, fq.inputs[2].data
    axis = fq.attrs.get("axis")
    qmin, qmax = quant_range(fq.attrs.get("bits", 8), fq.attrs.get("signed", True),
                             fq.attrs.get("narrow_range", False))
    groups = layer.attrs.get("groups", 1) if layer.op != "linear" else 1
    bias = None if layer_bias(layer) is None else layer_bias(layer).data
    float_inputs = float_run.batches(layer.inputs[0])
    quantized_inputs = quantized_run.batches(layer.inputs[0])
    float_rows, quantized_rows = sample_rows([float_inputs, quantized_inputs], layer.op, layer.attrs,
                                             weight.shape, rows, generator)
    activation = _activation(layer)
    integers = optimize_rounding(weight.data, scale, zero_point, axis, qmin, qmax, groups,
                                 float_rows, quantized_rows, bias, activation, settings, generator)
    rounded = dequantize(integers, scale, zero_point, axis)
    nearest = nearest_integers(weight.data, scale, zero_point, axis, qmin, qmax)
    errors = [reconstruction_error(weight.data, float_rows, quantized_rows,
                                   dequantize(q, scale, zero_point, axis), groups, bias, activation)
              for q in (nearest, integers)]
    notes.append(f"%{layer.name}: {int((integers != nearest).sum())} of {integers.size} weights rounded "
                 f"away from nearest; output error on the calibration rows {errors[0]:.4g} -> "
                 f"{errors[1]:.4g}")
    if np.array_equal(rounded, weight.data):
        return 0
    new = graph.add_constant(f"{weight.name}.adarounded", rounded)
    fq.replace_input(weight, new)
    remove_if_unused(graph, weight)
    return 1
