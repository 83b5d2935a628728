"""Counts, bytes and energies as short human-readable text (`qc.cost` tables, the CLI), and
the CLI's two summaries of a graph: its op counts and a before/after cost table."""

from __future__ import annotations

from collections import Counter


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


def op_counts(graph) -> str:
    """How many nodes of each op, most frequent first."""
    counts = Counter(node.op for node in graph)
    return ", ".join(f"{op} {n}" for op, n in counts.most_common())


def cost_comparison(before, after) -> str:
    """Two `CostReport`s side by side, with the relative change."""
    rows = [("MACs", "macs", format_count), ("other ops", "ops", format_count),
            ("params", "params", format_count), ("weight bytes", "weight_bytes", format_bytes),
            ("peak activation bytes", "peak_activation_bytes", format_bytes),
            ("energy (estimate)", "energy_pj", format_energy)]
    nodes_before, nodes_after = len(before.per_node), len(after.per_node)
    table = [("", "before", "after", "change"),
             ("nodes", str(nodes_before), str(nodes_after), _change(nodes_before, nodes_after))]
    for label, field, fmt in rows:
        old, new = getattr(before, field), getattr(after, field)
        table.append((label, fmt(old), fmt(new), _change(old, new)))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)])
        for row in table) + "\n"


def _change(old: float, new: float) -> str:
    return "0%" if old == new else (f"{(new - old) / old:+.1%}" if old else "new")
