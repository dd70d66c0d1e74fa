"""Command-line options several verbs share."""

from __future__ import annotations

import argparse
from pathlib import Path

from rws_hub.zoo.entries import DEFAULT_ENTRY


def add_folder_argument(p: argparse.ArgumentParser) -> None:
    """The positional model FOLDER (optional in a checkout: the embedded default entry)."""
    p.add_argument(
        "folder",
        nargs="?",
        type=Path,
        default=None,
        help=f"model folder (default in a checkout: {DEFAULT_ENTRY.folder}, the embedded "
        "default; an installed rws-hub needs a folder)",
    )
