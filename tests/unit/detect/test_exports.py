"""The detector's public names: importable from rws_hub.detect and, for existing importers,
from the thin rws_hub.detect.detector; each the same object as in its own module."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import rws_hub.detect as package
import rws_hub.detect.detector as shim

MODULES = ("features", "model", "rules", "cost", "training", "evaluation")


def test_every_public_name_is_re_exported() -> None:
    names: set[str] = set()
    for m in MODULES:
        mod = importlib.import_module(f"rws_hub.detect.{m}")
        for n in mod.__all__:
            assert n not in names, f"{n} exported by two modules"
            names.add(n)
            assert getattr(package, n) is getattr(mod, n) is getattr(shim, n)
    assert set(package.__all__) == set(shim.__all__) == names


def test_detector_module_only_re_exports() -> None:
    tree = ast.parse(Path(shim.__file__).read_text())
    kinds = {type(node).__name__ for node in tree.body}
    assert kinds <= {"Expr", "ImportFrom", "Assign"}, kinds
