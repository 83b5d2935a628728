"""Counts, bytes and energies as short human-readable text (`qc.cost` tables, the CLI)."""

from __future__ import annotations


def format_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)}"


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def format_energy(picojoules: float) -> str:
    for unit, size in (("J", 1e12), ("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(picojoules) >= size:
            return f"{picojoules / size:.2f} {unit}"
    return f"{picojoules:.2f} pJ"
