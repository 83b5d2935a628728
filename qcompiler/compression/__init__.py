"""Structured compression: dependency groups, channel scores and surgery, and the
budget search's sensitivity, cost and greedy allocation."""
