"""Signatures as values and everything that computes with them: mixes, deltas, quantization, layer selection, lineage, extraction and patching. Imports nothing of the package but errors."""
