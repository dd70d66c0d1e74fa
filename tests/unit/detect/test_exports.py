"""The detector's public names: importable from rws_hub.detect, each the same object as in its
own module."""

from __future__ import annotations

import importlib

import rws_hub.detect as package

MODULES = ("features", "model", "rules", "cost", "training", "evaluation", "build")


def test_every_public_name_is_re_exported() -> None:
    names: set[str] = set()
    for m in MODULES:
        mod = importlib.import_module(f"rws_hub.detect.{m}")
        for n in mod.__all__:
            assert n not in names, f"{n} exported by two modules"
            names.add(n)
            assert getattr(package, n) is getattr(mod, n)
    assert set(package.__all__) == names
