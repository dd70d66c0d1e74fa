"""The weights registry: one enum per zoo entry, duplicates refused, linked to architectures and
entries, and hubconf.py has exactly one entrypoint per registered enum."""

from __future__ import annotations

import ast
import enum

import pytest
from helpers import REPO_ROOT

from rws_hub.archs import list_models
from rws_hub.datasets import list_datasets
from rws_hub.zoo.entries import DEFAULT_ENTRY, ENTRIES, get_entry
from rws_hub.zoo.weights import (
    RWSWeights,
    WeightsSpec,
    default_weights,
    entrypoint,
    get_model_weights,
    get_weights,
    get_weights_enum,
    list_weights,
    register_weights,
)

GENERIC_ENTRYPOINTS = {"signature"}


def test_every_entry_has_registered_weights() -> None:
    assert sorted(list_weights()) == sorted(e.entrypoint for e in ENTRIES.values())
    for entry in ENTRIES.values():
        w = get_weights(entry.entrypoint)
        assert w is get_weights(entry.name) and w.entry is entry
        assert w.spec.architecture == entry.architecture in list_models()
        assert w.spec.dataset == entry.dataset in list_datasets()
        assert w.spec.embedded == REPO_ROOT / entry.folder
        assert get_weights_enum(entry.entrypoint) in get_model_weights(entry.architecture)
    assert default_weights().entry is DEFAULT_ENTRY
    assert get_model_weights("no_such_arch") == []
    with pytest.raises(ValueError, match="unknown zoo entry"):
        get_weights("nope")


def test_duplicate_weights_refused() -> None:
    existing = get_weights_enum(DEFAULT_ENTRY.entrypoint)
    with pytest.raises(ValueError, match="already registered"):
        register_weights(existing)

    class Again(RWSWeights):
        V1 = WeightsSpec.of(DEFAULT_ENTRY)
        DEFAULT = V1

    with pytest.raises(ValueError, match="already registered"):
        register_weights(Again)


def test_generated_entrypoint_names_and_docs() -> None:
    for name in list_weights():
        fn = entrypoint(get_weights_enum(name))
        assert fn.__name__ == name
        assert "[0, 1]" in fn.__doc__ and "signatures" in fn.__doc__ and "patch" in fn.__doc__
    assert get_entry(DEFAULT_ENTRY.entrypoint) is DEFAULT_ENTRY


def test_hubconf_has_one_line_per_weights_enum() -> None:
    """hubconf.py's public names are one entrypoint per registered weights enum, generated
    by ``entrypoint(<its enum>)``, plus the generic entrypoints."""
    tree = ast.parse((REPO_ROOT / "hubconf.py").read_text())
    generated: dict[str, str] = {}
    public = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            public.add(node.name)
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name) or target.id.startswith("_"):
            continue
        public.add(target.id)
        call = node.value
        if (
            isinstance(call, ast.Call)
            and getattr(call.func, "attr", getattr(call.func, "id", "")) == "entrypoint"
        ):
            arg = call.args[0]
            generated[target.id] = getattr(arg, "attr", getattr(arg, "id", ""))
    public.discard("dependencies")
    assert public == set(list_weights()) | GENERIC_ENTRYPOINTS
    for name, enum_name in generated.items():
        assert get_weights_enum(name).__name__ == enum_name
    assert set(generated) == set(list_weights())


def test_enums_are_torchvision_style() -> None:
    for name in list_weights():
        cls = get_weights_enum(name)
        assert issubclass(cls, RWSWeights) and issubclass(cls, enum.Enum)
        assert cls.DEFAULT in list(cls)
        assert cls.__name__.endswith("_Weights")
