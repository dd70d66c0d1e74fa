"""Serving without a framework: the engine and request parsing."""
