"""Graph rewrites, one a file. Each is a function `graph -> PassResult`, or a frozen dataclass
of options whose `__call__(graph)` returns one, and declares whether it works in place
(`qcompiler.ir.pipeline`). A pass never imports another pass: what passes share lives in
`qcompiler.ir` (the editing library, the op table) or a core package."""

# Re-exported so pipelines read `qc.passes.fold_batchnorm` (hence the noqa).
from qcompiler.passes.absorb_high_bias import absorb_high_bias  # noqa: F401
from qcompiler.passes.binarize_activations import binarize_activations  # noqa: F401
from qcompiler.passes.calibrate import calibrate  # noqa: F401
from qcompiler.passes.cluster_weights import cluster_weights  # noqa: F401
from qcompiler.passes.convert_batchnorm_to_conv import convert_batchnorm_to_conv  # noqa: F401
from qcompiler.passes.convert_to_winograd import convert_to_winograd  # noqa: F401
from qcompiler.passes.correct_bias import correct_bias  # noqa: F401
from qcompiler.passes.decompose_low_rank import decompose_low_rank  # noqa: F401
from qcompiler.passes.eliminate_dead_code import eliminate_dead_code  # noqa: F401
from qcompiler.passes.equalize_cross_layer import equalize_cross_layer  # noqa: F401
from qcompiler.passes.fold_batchnorm import fold_batchnorm  # noqa: F401
from qcompiler.passes.fold_constants import fold_constants  # noqa: F401
from qcompiler.passes.insert_fake_quant import insert_fake_quant  # noqa: F401
from qcompiler.passes.lower_to_integer import lower_to_integer  # noqa: F401
from qcompiler.passes.merge_similar_neurons import merge_similar_neurons  # noqa: F401
from qcompiler.passes.migrate_activation_scales import migrate_activation_scales  # noqa: F401
from qcompiler.passes.quantize_weights_grouped import quantize_weights_grouped  # noqa: F401
from qcompiler.passes.quantize_weights_low_bit import quantize_weights_low_bit  # noqa: F401
from qcompiler.passes.recalibrate_batchnorm import recalibrate_batchnorm  # noqa: F401
from qcompiler.passes.remove_filters import remove_filters  # noqa: F401
from qcompiler.passes.round_adaptive import round_adaptive  # noqa: F401
from qcompiler.passes.sparsify_weights import sparsify_weights  # noqa: F401
