"""`qcompiler run MODEL --backend interpreter`'s body: quantize, lower, run and print."""

import io

from qcompiler.examples.models import resnet_style
from qcompiler.run_model import run_model_on_interpreter


def test_run_model_on_interpreter_prints_agreement():
    model, example = resnet_style(batch=2, seed=0)
    out = io.StringIO()
    agreement = run_model_on_interpreter(model, example, calibration_batches=2, out=out)
    text = out.getvalue()
    assert "vs fake-quant simulation (exact): max 0 step(s), 0.00% of" in text and "top-1 agreement" in text
    assert agreement.outputs[0].max_steps <= 1.0 + 1e-3
