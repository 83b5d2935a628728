"""High-bias absorption: move the part of a ReLU's input that is (almost) always
positive out of the activation and into the next layer's bias.

    %y = batch_norm(%x, %g, %B, %m, %v)        %y = batch_norm(%x, %g, %B - c, %m, %v)
    %r = relu(%y)                         ->    %r = relu(%y)
    %z = conv2d(%r, %w2, %b2)                  %z = conv2d(%r, %w2, %b2 + W2 c)

with c = max(0, B - 3 |g|) per channel (Nagel et al. 2019, "Data-Free Quantization
Through Weight Equalization and Bias Correction", sec. 4.2; the arithmetic is in
`qcompiler.numerics.equalization`). A batch norm's output is roughly N(B, g^2),
so almost every value satisfies y >= c, and there ReLU(y - c) + c = ReLU(y): the
function is kept while the activation range shrinks by c, which a quantizer
then spends on the part of the range that varies.

Where the statistics come from: the batch norm itself. The pass therefore runs
on the *unfolded* graph, before `fold_batchnorm`, and rewrites the batch norm's
shift; `fold_batchnorm` then carries the change into the layer's bias. The
paper absorbs after cross-layer equalization, but the result is the same: the
equalization scales depend on the weights only, and c is positively homogeneous
(equalization divides channel i, B_i and g_i alike by s_i, so c_i becomes
c_i / s_i and W2 S (c / s) = W2 c). So the order is
`absorb_high_bias -> fold_batchnorm -> equalize_cross_layer`.

Matched: batch_norm -> relu (`relu`, `clamp(min=0)`) -> conv1d / conv2d / linear,
the ReLU output being that layer's data input. Not matched, with the reason in
`PassResult.notes`:
- the batch norm or ReLU output has other users or is a graph output (they would
  see the shifted values);
- ReLU6, unless `replace_relu6=True`: min(y - c, 6) + c = min(y, 6 + c), so the
  clip point would move; with the option the ReLU6 becomes a ReLU (as
  equalize_cross_layer(replace_relu6=True) would do anyway);
- a zero-padded conv after the ReLU, unless `include_padded_convs=True`: the
  padded border taps see 0 instead of c, so border outputs change by the sum of
  W2 c over the taps that fall into the padding. The paper ignores this; the
  option lets you do the same;
- non-constant or quantized parameters, a batch-norm shift or layer bias shared
  with another node (rewriting it would change that node too), or a linear layer
  after a batch norm over a 3-D tensor (the channel axes differ). A shared
  consumer weight is fine: it is only read;
- a graph with no batch norm at all: the statistics are gone (`fold_batchnorm`
  already ran); run this pass before it.

Requires: eval-mode batch norms (constant parameters). Preserves: the function
wherever the ReLU input is >= c, i.e. for about 99.9% of values when the data
matches the batch-norm statistics (exactly on data clipped to 3 sigma), shapes,
dtypes and node names. New constants are `<old>.absorbed`; a layer without bias
gets one (`<layer>.bias.absorbed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from qcompiler.errors import OptionError
from qcompiler.ir import Graph, Node, Value
from qcompiler.ir.edit import (
    is_relu6,
    is_relu_like,
    optional_input,
    replace_constant,
    why_not_float_constant,
    why_not_private,
)
from qcompiler.ir.ops import OUT_IN_WEIGHTED_OPS
from qcompiler.ir.pipeline import PassResult
from qcompiler.numerics.equalization import absorbed_biases, high_bias_shift


@dataclass(frozen=True)
class AbsorbHighBias:
    """The configured high-bias absorption pass (see the module docstring)."""

    sigmas: float = 3.0
    replace_relu6: bool = False
    include_padded_convs: bool = False

    name: ClassVar[str] = "absorb_high_bias"
    in_place: ClassVar[bool] = True  # rewrites the graph it is given

    def __post_init__(self):
        if not self.sigmas >= 0:
            raise OptionError(f"absorb_high_bias: sigmas must be >= 0, got {self.sigmas}")

    def __call__(self, graph: Graph) -> PassResult:
        notes: list[str] = []
        absorbed = 0
        batch_norms = [node for node in graph if node.op == "batch_norm"]
        if not batch_norms:
            notes.append("no batch_norm in the graph: high-bias absorption reads the batch-norm "
                         "statistics, so run it before fold_batchnorm")
        for bn in batch_norms:
            found = self._match(graph, bn)
            if isinstance(found, str):
                notes.append(f"batch_norm %{bn.name} not absorbed: {found}")
                continue
            if found is None:
                continue
            activation, consumer = found
            gamma, beta = bn.inputs[1], bn.inputs[2]
            shift = high_bias_shift(beta.data, np.ones(beta.shape) if gamma is None else gamma.data,
                                    self.sigmas)
            if not (shift > 0).any():
                continue
            groups = consumer.attrs.get("groups", 1) if consumer.op != "linear" else 1
            bias = optional_input(consumer, 2)
            new_beta, new_bias = absorbed_biases(beta.data, consumer.inputs[1].data,
                                                 None if bias is None else bias.data, shift, groups)
            replace_constant(graph, bn, 2, new_beta, f"{beta.name}.absorbed")
            replace_constant(graph, consumer, 2, new_bias,
                             f"{bias.name}.absorbed" if bias else f"{consumer.name}.bias.absorbed")
            if is_relu6(activation):
                activation.op, activation.attrs = "relu", {}
                notes.append(f"replaced ReLU6 %{activation.name} by ReLU to absorb %{bn.name}")
            absorbed += 1
            notes.append(f"%{bn.name} -> %{consumer.name}: absorbed c > 0 in "
                         f"{int((shift > 0).sum())} of {shift.size} channels (max {shift.max():.3g})")
        return PassResult(graph, absorbed > 0, notes)

    def _match(self, graph: Graph, bn: Node) -> tuple[Node, Node] | str | None:
        """(activation, consumer) if `bn` can be absorbed, a reason if something specific
        blocks it, None if no ReLU follows it."""
        value = bn.outputs[0]
        if len(value.users) != 1 or value in graph.outputs or not _is_relu(value.users[0], True):
            if any(_is_relu(user, True) for user in value.users):
                return f"its output %{value.name} has other users or is a graph output"
            return None
        activation = value.users[0]
        if is_relu6(activation) and not self.replace_relu6:
            return (f"ReLU6 %{activation.name} follows it; min(y - c, 6) + c != min(y, 6) "
                    "(pass replace_relu6=True to turn it into ReLU)")
        hidden = activation.output
        if len(hidden.users) != 1 or hidden in graph.outputs:
            return f"the ReLU output %{hidden.name} has {len(hidden.users)} users or is a graph output"
        consumer = hidden.users[0]
        if consumer.op not in OUT_IN_WEIGHTED_OPS or consumer.inputs[0] is not hidden:
            return f"the ReLU output feeds {consumer.op} %{consumer.name}, not a conv or linear layer"
        if consumer.op == "linear" and len(hidden.shape) != 2:
            return (f"linear %{consumer.name} reads the last axis of a {len(hidden.shape)}-D "
                    "tensor, but batch_norm normalises axis 1")
        if consumer.op != "linear" and any(consumer.attrs.get("padding", [0])) \
                and not self.include_padded_convs:
            return (f"{consumer.op} %{consumer.name} zero-pads its input, so border outputs would "
                    "change (pass include_padded_convs=True to accept that, as the paper does)")
        gamma, beta = bn.inputs[1], bn.inputs[2]
        if beta is None:
            return "it has no shift (affine=False), so there is nothing to absorb"
        # The shift and the consumer's bias are rewritten, so they must be this
        # layer's own; the scale and the consumer's weight are only read.
        for owner, role, parameter, rewritten in ((bn, "shift", beta, True), (bn, "scale", gamma, False),
                                                  (consumer, "weight", consumer.inputs[1], False),
                                                  (consumer, "bias", optional_input(consumer, 2), True)):
            reason = _why_not_usable(graph, owner, role, parameter, rewritten)
            if reason is not None:
                return reason
        return activation, consumer


def absorb_high_bias(graph: Graph | None = None, /, *, sigmas: float = 3.0, replace_relu6: bool = False,
                     include_padded_convs: bool = False):
    """Run high-bias absorption on `graph` (-> PassResult), or, called without a graph,
    return the pass configured with these options (-> AbsorbHighBias)."""
    configured = AbsorbHighBias(sigmas, replace_relu6, include_padded_convs)
    return configured if graph is None else configured(graph)


absorb_high_bias.in_place = True  # as the configured pass it runs


def _is_relu(node: Node, allow_relu6: bool) -> bool:
    return is_relu_like(node) or (allow_relu6 and is_relu6(node))


def _why_not_usable(graph: Graph, owner: Node, role: str, value: Value | None, rewritten: bool
                    ) -> str | None:
    """None if the parameter may be read (and, if `rewritten`, replaced); else why not."""
    if value is None:
        return None
    problem = (why_not_private(graph, value, owner, "absorb") if rewritten
               else why_not_float_constant(value, "absorb"))
    return None if problem is None else f"the {role} %{value.name} of %{owner.name} {problem}"
