"""Quantization: configuration, observers, the quantizers of a fake-quant graph, calibration
(and its data-free variant), sensitivity, and integer lowering (driver, state and rules).
Passes that insert, calibrate or refine quantizers live in `qcompiler.passes`."""
