"""Demo and benchmark material: built-in models, the digits data set, photo crops."""
