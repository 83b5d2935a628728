"""Analyses of a graph: the static cost model, fidelity metrics, report rendering."""
