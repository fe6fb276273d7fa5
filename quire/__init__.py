"""Quire: durable, audited long-document writing with language models."""
