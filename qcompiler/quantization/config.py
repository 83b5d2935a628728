"""What to quantize and how: `QScheme` (one integer format) and `QuantConfig` (schemes for
weights and activations, observers, overrides and exclusions), validated on construction.

    config = QuantConfig.preset("int8")
    config = QuantConfig(weight=QScheme(4, symmetric=True, per_channel=True, narrow_range=True),
                         activation=QScheme(8, signed=False),
                         op_type_overrides={"softmax": QOverride(activation=QScheme(16))},
                         exclude_nodes=["classifier"])

Precedence, most specific first: an override for the node, then one for its op
type, then the global scheme. The activation quantized after a fused group
(conv -> relu) looks the group's nodes up from last to first, node names before
op types. Node names (in `node_overrides`, `exclude_nodes`) are checked when the
config meets a graph (`check_names`), since only then are they known; op types
are checked here against the IR's op set.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType

from qcompiler.errors import QuantizationError
from qcompiler.ir.ops import OPS
from qcompiler.numerics.quant import quant_range
from qcompiler.quantization.observers import OBSERVERS, make_observer


def _refuse_unknown_fields(cls):
    """Make a misspelt field (QuantConfig(activation_observr=...)) a QuantizationError that
    names the field and the closest real one, rather than the generated __init__'s
    TypeError. Wraps the dataclass's generated __init__ once, where the class is defined."""
    generated = cls.__init__
    names = [f.name for f in fields(cls)]

    def __init__(self, *args, **changes):
        for key in changes:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=2)
                hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
                raise QuantizationError(f"{cls.__name__} has no field {key!r}; {hint}its fields "
                                        f"are {', '.join(names)}")
        generated(self, *args, **changes)

    __init__.__doc__ = generated.__doc__
    cls.__init__ = __init__
    return cls



@_refuse_unknown_fields
@dataclass(frozen=True)
class QScheme:
    """One integer format: `bits` (2..8, or 16 for activations), signed or not, symmetric
    (zero point 0) or asymmetric, per output channel or per tensor, narrow range
    (signed types without their most negative level, e.g. [-127, 127])."""

    bits: int = 8
    symmetric: bool = False
    per_channel: bool = False
    narrow_range: bool = False
    signed: bool = True

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) \
                or not (2 <= self.bits <= 8 or self.bits == 16):
            raise QuantizationError(f"QScheme bits must be an int in 2..8, or 16 (activations "
                                    f"only), got {self.bits!r}")
        if self.symmetric and not self.signed:
            raise QuantizationError(
                "QScheme(symmetric=True, signed=False) makes no sense: symmetric quantization "
                "fixes zero_point = 0 in the middle of a signed range; use signed=True, or "
                "symmetric=False for an unsigned type")
        if self.narrow_range and not self.signed:
            raise QuantizationError(
                "QScheme(narrow_range=True, signed=False) makes no sense: narrow range drops "
                "the most negative level of a signed type; use signed=True or narrow_range=False")

    @property
    def qmin(self) -> int:
        return quant_range(self.bits, self.signed, self.narrow_range)[0]

    @property
    def qmax(self) -> int:
        return quant_range(self.bits, self.signed, self.narrow_range)[1]

    def __str__(self) -> str:
        kind = f"{'int' if self.signed else 'uint'}{self.bits}"
        return (f"{kind} {'symmetric' if self.symmetric else 'asymmetric'} "
                f"{'per-channel' if self.per_channel else 'per-tensor'}"
                f"{' narrow-range' if self.narrow_range else ''}")


@_refuse_unknown_fields
@dataclass(frozen=True)
class QOverride:
    """Schemes that replace the global ones for some nodes; None keeps the global one."""

    weight: QScheme | None = None
    activation: QScheme | None = None


_INT8_WEIGHTS = QScheme(8, symmetric=True, per_channel=True, narrow_range=True)
# uint8 asymmetric activations: x86 int8 kernels (vpmaddubsw, VNNI) multiply u8 by s8,
# and onnxruntime's QDQ default is the same U8S8 pairing.
_UINT8_ACTIVATIONS = QScheme(8, signed=False)


@_refuse_unknown_fields
@dataclass(frozen=True)
class QuantConfig:
    weight: QScheme = _INT8_WEIGHTS
    activation: QScheme = _UINT8_ACTIVATIONS
    # Observer names from `qcompiler.quantization.observers.OBSERVERS`, and keyword options for them
    # (e.g. activation_observer_options={"percentile": 99.9}). Activations default to the
    # 99.99th percentile: on the pretrained MobileNetV2 (256 calibration, 512 evaluation
    # photo crops, per-channel int8 weights) it took mean KL from 0.31 (min/max) to 0.12
    # and top-1 agreement from 64% to 75%; a few outliers otherwise set the 8-bit step.
    # None (the default) picks per activation (`activation_observer_for`): the percentile for
    # activations of 8 bits or fewer, min/max for 16-bit ones (65,536 levels leave room for
    # the outliers a percentile would clip, and on a transformer those outliers carry the
    # signal: all-MiniLM-L6-v2 at 16-bit activations lost embedding cosine with the
    # percentile, see benchmarks/results/transformer_ptq.md), and the `op_type_observers`
    # entry of the op that produces it, if any. A name applies to every activation.
    weight_observer: str = "minmax"
    activation_observer: str | None = None
    weight_observer_options: Mapping = field(default_factory=dict)
    activation_observer_options: Mapping = field(default_factory=dict)
    op_type_overrides: Mapping[str, QOverride] = field(default_factory=dict)
    # Activation observers by the op that produces the activation, used when
    # activation_observer is None (e.g. {"softmax": "minmax"}).
    op_type_observers: Mapping[str, str] = field(default_factory=dict)
    # The scheme of activations that no conv/linear/matmul and no lookup-table op (GELU,
    # tanh...) reads (residual adds, the inputs of layer_norm and softmax, graph outputs):
    # integer kernels multiply-accumulate only at layer inputs, and tables are built for
    # 8-bit inputs, so these can be wider (16-bit) at the cost of wider adds, while every
    # layer input stays `activation`. None: `activation` everywhere. Overrides win over it.
    non_mac_activation: QScheme | None = None
    # SmoothQuant's migration strength (Xiao et al. 2023): `qc.quantize` runs
    # `qc.passes.migrate_activation_scales(alpha=...)` on the calibration data before
    # quantizing. None: no migration. See that pass for how to search alpha.
    smoothing_alpha: float | None = None
    node_overrides: Mapping[str, QOverride] = field(default_factory=dict)
    exclude_nodes: frozenset[str] = frozenset()
    exclude_op_types: frozenset[str] = frozenset()

    def __post_init__(self):
        for name in ("weight_observer_options", "activation_observer_options",
                     "op_type_overrides", "node_overrides", "op_type_observers"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        for name in ("exclude_nodes", "exclude_op_types"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise QuantizationError(f"QuantConfig.{name} takes a collection of names, got the "
                                        f"string {value!r}; write [{value!r}]")
            object.__setattr__(self, name, frozenset(value))
        _check_scheme(self.weight, "weight", "QuantConfig.weight")
        _check_scheme(self.activation, "activation", "QuantConfig.activation")
        alpha = self.smoothing_alpha
        if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                                  or not 0.0 <= alpha <= 1.0):
            raise QuantizationError(f"QuantConfig.smoothing_alpha must be a number in [0, 1] (or "
                                    f"None for no migration), got {alpha!r}")
        if self.non_mac_activation is not None:
            _check_scheme(self.non_mac_activation, "activation", "QuantConfig.non_mac_activation")
        observers = [("weight_observer", self.weight_observer, self.weight, "weight"),
                     ("activation_observer", self.activation_observer, self.activation, "activation")]
        observers += [(f"op_type_observers[{op!r}]", name, self.activation, "activation")
                      for op, name in self.op_type_observers.items()]
        for where, name, scheme, role in observers:
            if name is None and role == "activation":
                continue
            if name not in OBSERVERS:
                raise QuantizationError(f"QuantConfig.{where} {name!r} is unknown; valid "
                                        f"observers: {', '.join(OBSERVERS)}")
            try:  # construct one now, so that bad options fail here and not mid-calibration
                make_observer(name, scheme, **getattr(self, f"{role}_observer_options"))
            except (TypeError, ValueError) as error:
                raise QuantizationError(f"QuantConfig.{role}_observer_options do not suit the "
                                        f"{name!r} observer: {error}") from None
        for op_type in (*self.op_type_overrides, *self.op_type_observers, *self.exclude_op_types):
            if op_type not in OPS:
                close = difflib.get_close_matches(op_type, list(OPS), n=3)
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise QuantizationError(f"QuantConfig names op type {op_type!r}, which is not an "
                                        f"IR op{hint} (the ops are listed in qcompiler.ir.ops.OPS)")
        for kind, overrides in (("op_type_overrides", self.op_type_overrides),
                                ("node_overrides", self.node_overrides)):
            for key, override in overrides.items():
                if not isinstance(override, QOverride):
                    raise QuantizationError(f"QuantConfig.{kind}[{key!r}] must be a QOverride, got "
                                            f"{type(override).__name__}")
                where = f"QuantConfig.{kind}[{key!r}]"
                if override.weight is not None:
                    _check_scheme(override.weight, "weight", f"{where}.weight")
                if override.activation is not None:
                    _check_scheme(override.activation, "activation", f"{where}.activation")

    # ---- presets ------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, **changes) -> QuantConfig:
        """A named configuration; keyword arguments replace its fields."""
        if name not in PRESETS:
            close = difflib.get_close_matches(str(name), list(PRESETS), n=2)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise QuantizationError(f"unknown QuantConfig preset {name!r}; valid presets: "
                                    f"{', '.join(PRESETS)}{hint}")
        return replace(PRESETS[name], **changes)

    # ---- lookups ------------------------------------------------------------------

    def is_excluded(self, node) -> bool:
        return node.name in self.exclude_nodes or node.op in self.exclude_op_types

    def weight_scheme(self, node) -> QScheme:
        return self._lookup([node], "weight")

    def activation_scheme(self, owners: Sequence) -> QScheme:
        """The scheme of a tensor produced by the nodes `owners` (a fused group, in order)
        or, for a graph input, of the input Value itself (looked up by name)."""
        return self._lookup(owners, "activation")

    def activation_observer_for(self, scheme: QScheme, producer_op: str | None) -> str:
        """The observer of an activation in `scheme` produced by an op of type `producer_op`
        (None for a graph input): the explicit `activation_observer` if set, else the
        op's `op_type_observers` entry, else min/max above 8 bits and the percentile below
        (see the field's comment)."""
        if self.activation_observer is not None:
            return self.activation_observer
        if producer_op in self.op_type_observers:
            return self.op_type_observers[producer_op]
        return "minmax" if scheme.bits > 8 else "percentile"

    def non_mac_scheme(self, owners: Sequence) -> QScheme:
        """The scheme of an activation produced by `owners` that no layer multiplies:
        an override if one applies, else `non_mac_activation`, else `activation`."""
        scheme = self._lookup(owners, "activation")
        if scheme is self.activation and self.non_mac_activation is not None:
            return self.non_mac_activation
        return scheme

    def _lookup(self, owners: Sequence, role: str) -> QScheme:
        for owner in reversed(owners):
            override = self.node_overrides.get(owner.name)
            if override is not None and getattr(override, role) is not None:
                return getattr(override, role)
        for owner in reversed(owners):
            override = self.op_type_overrides.get(getattr(owner, "op", None))
            if override is not None and getattr(override, role) is not None:
                return getattr(override, role)
        return getattr(self, role)

    def check_names(self, graph) -> None:
        """Every node name this config mentions must be a node or input of `graph`."""
        known = [node.name for node in graph] + [value.name for value in graph.inputs]
        known_set = set(known)
        for kind, names in (("exclude_nodes", sorted(self.exclude_nodes)),
                            ("node_overrides", list(self.node_overrides))):
            for name in names:
                if name in known_set:
                    continue
                close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
                hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
                        else "; print(graph) lists the node names")
                raise QuantizationError(f"QuantConfig.{kind} names {name!r}, which is not a node "
                                        f"or input of graph {graph.name}{hint}")


def as_quant_config(config, where: str = "config") -> QuantConfig:
    """What every `config=` option takes: a QuantConfig, a preset name ("int8", "w4a8"...),
    or None for the int8 preset."""
    if config is None:
        return PRESETS["int8"]
    if isinstance(config, QuantConfig):
        return config
    if isinstance(config, str):
        return QuantConfig.preset(config)
    raise QuantizationError(f"{where} must be a QuantConfig or a preset name "
                            f"({', '.join(PRESETS)}), got {type(config).__name__}")


def default_config(graph) -> QuantConfig:
    """What `qc.quantize(config=None)` uses for `graph`: the `transformer` preset for a graph
    with no convolution whose layers are mostly linear/matmul and that normalises with
    layer_norm or softmax (an attention model), else `int8`."""
    counts: dict[str, int] = {}
    for node in graph:
        counts[node.op] = counts.get(node.op, 0) + 1
    convolutions = sum(counts.get(op, 0) for op in ("conv1d", "conv2d", "conv_transpose2d"))
    products = counts.get("linear", 0) + counts.get("matmul", 0)
    attention_like = counts.get("layer_norm", 0) + counts.get("softmax", 0) > 0
    return PRESETS["transformer" if not convolutions and products >= 2 and attention_like else "int8"]


def _check_scheme(scheme, role: str, where: str) -> None:
    if not isinstance(scheme, QScheme):
        raise QuantizationError(f"{where} must be a QScheme, got {type(scheme).__name__}")
    if role == "weight" and scheme.bits > 8:
        raise QuantizationError(f"{where} has {scheme.bits} bits; weights take 2..8 bits "
                                "(16-bit is for activations only)")
    if role == "activation" and scheme.per_channel:
        raise QuantizationError(
            f"{where} is per-channel; activations are quantized per tensor, because the "
            "integer ops that consume them (requantization, residual adds, concat) need one "
            "scale per tensor. Set per_channel=False")


PRESETS: dict[str, QuantConfig] = {
    # Per-channel symmetric int8 weights, asymmetric uint8 per-tensor activations.
    "int8": QuantConfig(),
    # The strict case of Nagel et al. 2019: per-tensor weights too (CLE matters here).
    "int8-per-tensor": QuantConfig(weight=replace(_INT8_WEIGHTS, per_channel=False)),
    # Weights limited to 7 bits ([-63, 63]) for x86 int8 kernels built on vpmaddubsw (AVX2, and
    # AVX-512 without VNNI), which add pairs of u8 x s8 products in int16 and saturate with
    # full 8-bit weights (docs/integer-spec.md, section 8); the TVM backend refuses to build
    # a graph with wider weights for those targets (qc.backends.tvm.quant_preset names this).
    "int8-avx2": QuantConfig(weight=QScheme(7, symmetric=True, per_channel=True, narrow_range=True)),
    # int8 activations for ARM's sdot (int8 x int8, docs/integer-spec.md section 8), which
    # lower_to_integer(target="aarch64") requires.
    "int8-aarch64": QuantConfig(activation=QScheme(8, signed=True)),
    # 4-bit weights: min/max wastes most of 15 levels on outliers, so clip by MSE.
    "w4a8": QuantConfig(weight=QScheme(4, symmetric=True, per_channel=True, narrow_range=True),
                        weight_observer="mse"),
    # 16-bit activations (e.g. for accuracy-sensitive layers or a first debugging step).
    # 65,536 levels leave room for the outliers a percentile would clip.
    "w8a16": QuantConfig(activation=QScheme(16), activation_observer="minmax"),
    # Transformer encoders (attention, linear, layer_norm, GELU): every conv/linear/matmul
    # input stays 8-bit (uint8, per tensor) with int8 per-channel weights, while what no
    # layer multiplies (residual adds, the inputs of layer_norm and softmax) is 16-bit, and
    # every activation is ranged by min/max: per-op sweeps on all-MiniLM-L6-v2 showed the
    # residual stream and the 99.99th percentile to be what breaks (results in
    # benchmarks/results/transformer_ptq.md). `qc.quantize` also migrates activation
    # outliers into the weights (SmoothQuant, `smoothing_alpha`) with this preset.
    "transformer": QuantConfig(activation_observer="minmax", non_mac_activation=QScheme(16),
                               smoothing_alpha=0.5),
}
