"""Structured compression: dependency groups, channel scores and surgery, and the
budget search's cost and sensitivity models."""
