"""Architectures: a registry of model builders and the builders themselves."""
