"""What calibration checks in the values it observes, before any range becomes a scale.

Two kinds of value break a quantization grid, and calibration treats them differently:

- **Infinities** are saturating fills: `masked_fill(mask, float("-inf"))` before a softmax,
  a `where` with an infinite branch. A fake_quant clamps them to the lowest or highest level
  (torch's kernels and the integer path alike), which is what a mask needs, so they are
  left out of the observed range and counted in the calibration notes. NaN is an error.
- **Absurd finite values**: one value so far above the rest that a grid spanning it rounds
  nearly every other value to zero, making the quantized model ignore its input (a corrupt
  calibration batch holding 3e38; an attention mask filled with `torch.finfo.min` and added
  to the scores). The test: after the observer has chosen the range, the median magnitude
  of the nonzero values is below 1/256 of a quantization step, i.e. the range exceeds
  2**(bits + 8) times that median. A graph input that fails it is bad calibration data
  (`CalibrationDataError`, naming the batch, the element and its value); an inner value is
  a `QuantizationError` naming the node.

The median is taken on a strided sample of at most 4,096 elements of each batch (cheap next
to the observers' own work) and then across batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qcompiler.errors import CalibrationDataError, QuantizationError
from qcompiler.ir import Value

_SAMPLE = 4096
# The typical (median nonzero) magnitude must be at least this fraction of a step.
_STEPS_PER_TYPICAL = 1 / 256


@dataclass
class RangeRecord:
    """What one quantization point's observed values looked like, beyond their range."""

    largest: float = 0.0  # the largest |x| seen
    where: tuple = ()  # (batch index, value name, element index) of that |x|
    typical: list = field(default_factory=list)  # per batch: median |x| of nonzero x (sample)
    infinities: int = 0

    def observe(self, array: np.ndarray, batch: int | None, name: str) -> np.ndarray | None:
        """Record `array` (from calibration batch `batch`, or None for a constant); return
        what the range observer should see (infinities removed; None if nothing is left)."""
        finite = np.isfinite(array)
        if not finite.all():
            self.infinities += int(array.size - np.count_nonzero(finite))
            array = array[finite]
            if array.size == 0:
                return None
        magnitude = np.abs(array)
        largest = float(magnitude.max())
        if largest > self.largest or not self.where:
            self.largest = largest
            position = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
            self.where = (batch, name, tuple(int(i) for i in position))
        flat = magnitude.reshape(-1)
        sample = flat[::max(1, flat.size // _SAMPLE)]
        sample = sample[sample != 0]
        if sample.size:
            self.typical.append(float(np.median(sample.astype(np.float64))))
        return array

    def problem(self, low: float, high: float, bits: int) -> tuple[float, float] | None:
        """(typical magnitude, ratio of the range to it) when the range [low, high] is
        absurd for these values (see the module docstring), else None."""
        if not self.typical:
            return None
        typical = float(np.median(self.typical))
        span = max(abs(low), abs(high))
        ratio = span / typical if typical > 0 else float("inf")
        if span / (1 << bits) * _STEPS_PER_TYPICAL > typical:
            return typical, ratio
        return None


def check_range(record: RangeRecord, low: float, high: float, bits: int, point: str,
                observed: Value) -> None:
    """Raise if the range [low, high] chosen for the values of `record` is absurd."""
    found = record.problem(low, high, bits)
    if found is None:
        return
    typical, ratio = found
    batch, name, position = record.where
    grid = (f"an {bits}-bit grid spanning [{low:.4g}, {high:.4g}] has steps of "
            f"{(high - low) / ((1 << bits) - 1):.3g}, which round nearly every value of "
            f"%{name} (median magnitude {typical:.3g}) to zero")
    if observed.producer is None:  # a graph input: the calibration data itself
        raise CalibrationDataError(
            f"calibration batch {batch}: input %{name} holds {record.largest:.4g} at index "
            f"{list(position)}, {ratio:.3g} times the median magnitude of its values: {grid}, "
            "so the quantized model would ignore its input. Remove or clip that batch "
            "(e.g. torch.clamp) before quantizing")
    raise QuantizationError(
        f"calibration: {observed.producer.describe()} (quantized by %{point}) reaches "
        f"{record.largest:.4g} in calibration batch {batch} (at index {list(position)}), "
        f"{ratio:.3g} times the median magnitude of its values: {grid}. If it is an attention "
        "mask (a huge negative number such as torch.finfo.min added to the scores), mask the "
        "scores with scores.masked_fill(mask == 0, float('-inf')) instead (an infinity "
        "quantizes to the lowest level), or exclude the mask's nodes from quantization "
        "(QuantConfig(exclude_nodes=[...]))")
