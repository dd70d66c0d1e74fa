"""Data sets: specs (classes, normalisation, size) in a registry, loaders for the layouts users have, and the corruptions."""
