"""Lowering rules for I-BERT's integer softmax and layer_norm (Kim et al. 2021;
docs/integer-spec.md section 15, arithmetic in `qcompiler.numerics.ibert`), used when
`lower_to_integer(ibert=True)`: without them these ops fall back to float between
`dequantize` and `quantize`. They approximate the float ops (a polynomial exp, an integer
mean, square root and division), so unlike the other rules they do not reproduce the
fake-quant simulation; their fidelity cost against the float fall back is measured
(benchmarks/transformer_ptq.py).
"""

from __future__ import annotations

from qcompiler.ir import Node
from qcompiler.ir.edit import optional_input
from qcompiler.numerics import ibert
from qcompiler.quantization import lowering_rules as compute
from qcompiler.quantization.lowering_state import LoweringState, fake_quant_qparams


def lower_softmax(state: LoweringState, node: Node):
    found = compute.quantized_operands(state, node, [0])
    if isinstance(found, str):
        return found
    (x,), (chain, fake_quant, out_q) = found
    dim = node.attrs["dim"]
    try:
        constants = ibert.exp_constants(compute.scale_of(x))
        bits = ibert.exp_fraction_bits(constants, node.inputs[0].shape[dim])
    except ValueError as error:
        return str(error)
    m0, shift = compute.multiplier(2.0 ** -bits / float(out_q.scale[0]), node)
    attrs = {"dim": dim, "exp_ln2": constants[0], "exp_b": constants[1], "exp_c": constants[2],
             "fraction_bits": bits, "multiplier": m0, "shift": shift,
             **compute.output_attrs(out_q, chain, node.describe())}
    result = state.emit("qsoftmax", [x], attrs, node.name, node.source).output
    _finish(state, chain, fake_quant, result)
    return None


def lower_layer_norm(state: LoweringState, node: Node):
    found = compute.quantized_operands(state, node, [0])
    if isinstance(found, str):
        return found
    (x,), (chain, fake_quant, out_q) = found
    shape = node.attrs["normalized_shape"]
    gamma, beta = optional_input(node, 1), optional_input(node, 2)
    if len(shape) != 1 or any(v is not None and not v.is_constant for v in (gamma, beta)):
        return "integer layer_norm normalises the last axis with constant gamma and beta"
    channels = shape[0]
    gamma_data = [1.0] * channels if gamma is None else gamma.data
    try:
        k, b, shift, eps_q = ibert.layer_norm_params(compute.scale_of(x), gamma_data,
                                                     None if beta is None else beta.data,
                                                     float(out_q.scale[0]), channels, node.attrs["eps"])
    except ValueError as error:
        return str(error)
    constants = [state.constant(f"{node.name}.multiplier", k, "i32"),
                 state.constant(f"{node.name}.bias_q", b, "i64"),
                 state.constant(f"{node.name}.shift", shift, "i32")]
    attrs = {"eps_q": eps_q, **compute.output_attrs(out_q, chain, node.describe())}
    result = state.emit("qlayer_norm", [x, *constants], attrs, node.name, node.source).output
    _finish(state, chain, fake_quant, result)
    return None


def _finish(state: LoweringState, chain, fake_quant, result) -> None:
    """As `lowering_rules.finish`, without the rounding check: these ops approximate the
    float op, so the fake_quant's rounding rule does not describe them."""
    state.consume([*chain, fake_quant])
    state.set_int(fake_quant.output, result, fake_quant_qparams(fake_quant))


RULES = {"softmax": lower_softmax, "layer_norm": lower_layer_norm}
