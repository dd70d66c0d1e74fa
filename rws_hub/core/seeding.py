"""Deterministic random generators keyed by several integers (seed, epoch, step, ...)."""

from __future__ import annotations

import torch


def seeded_generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` whose seed is a fixed function of ``keys``."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)
