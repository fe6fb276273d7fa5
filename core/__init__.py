"""Pure rules of Quire: no I/O, importable by every layer."""
