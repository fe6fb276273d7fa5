"""Deterministic workflow code: no I/O, no clocks, no randomness; ids in, ids out."""
