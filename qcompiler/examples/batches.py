"""Calibration and evaluation batches for the demo and the CLI's compile command."""

from __future__ import annotations

import torch


def demo_data(spec: str, example_inputs: tuple, count: int) -> tuple[list, list, str]:
    """Calibration and evaluation batches: disjoint photo crops for an ImageNet model, else
    seeded random tensors shaped like the example inputs."""
    batch = example_inputs[0].shape[0]
    if spec in ("pretrained_mobilenet_v2", "mobilenet_v2"):
        from qcompiler.examples.photos import calibration_pool, evaluation_pool

        resolution = example_inputs[0].shape[-1]
        calibration = list(calibration_pool(count, seed=0, batch_size=batch, size=resolution))
        evaluation = list(evaluation_pool(count, seed=1, batch_size=batch, size=resolution))
        return calibration, evaluation, f"{count} + {count} disjoint photo crops"
    generator = torch.Generator().manual_seed(0)

    def like(example):
        if example.is_floating_point():
            return torch.randn(example.shape, generator=generator)
        return torch.randint(0, int(example.max()) + 1, example.shape, generator=generator)

    batches = [tuple(like(x) for x in example_inputs) for _ in range(2 * max(1, count // batch))]
    half = len(batches) // 2
    return batches[:half], batches[half:], f"{half} + {half} random batches"
