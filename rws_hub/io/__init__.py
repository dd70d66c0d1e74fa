"""Artifacts on disk and on the hub: safetensors files, the model folder, its card, hub push/pull."""
