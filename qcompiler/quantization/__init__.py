"""Quantization: configuration, observers, calibration, sensitivity and the integer
lowering rules. Passes that insert or refine quantizers live in `qcompiler.passes`."""
