"""Frontends: how a model becomes an IR graph (torch.export today)."""
