"""Shared test helpers (tiny model folders, server start/stop, HTTP client bits)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
