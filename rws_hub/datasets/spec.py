"""Data-set specs: what a model needs to know about the data it was trained on, in a registry.

A :class:`DatasetSpec` names a data set's classes (in label order), its normalisation
(per-channel mean / std of the training images, in [0, 1] units), its image size, where the
data lives by default and which file holds each split. Model folders copy ``classes``,
``mean``, ``std`` and ``input_size`` into their ``config.json`` (:meth:`DatasetSpec.config`),
so a folder never needs the registry to be loaded; the registry is for building and training.

A data set registers by calling :func:`register_dataset` in its own module; importing
:mod:`rws_hub.datasets` imports the built-in ones. One of them is the *default* data set: the
one a model folder config that names none was made for (folders written before configs named
their data set), and the one the training and zoo commands use unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetSpec:
    """One data set: name, classes, normalisation, image size and where its files are.

    Args:
        name: registry name (``[a-z0-9_-]``), recorded as ``dataset`` in model folder configs.
        title: display name for model cards and messages.
        classes: class names in label order.
        mean, std: per-channel normalisation of the training images (3 floats each, [0, 1]).
        image_size: side of the square images the models take.
        root: where the data lives by default (a path the loaders of
            :mod:`rws_hub.datasets.arrays` read; relative paths are relative to the working
            directory, as the command-line defaults are).
        splits: split name -> the file stem holding it in ``root`` (``{"test": "val"}`` reads
            ``val.npz`` for the test split); splits not listed use their own name.
        description: one line for model cards and ``rws`` help.
    """

    name: str
    title: str
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int = 32
    root: str | None = None
    splits: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data set {self.name!r}: classes must be distinct and non-empty")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"data set {self.name!r}: mean and std need 3 values, std > 0")
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> list[int]:
        """``[3, S, S]``, as model folder configs record it."""
        return [3, self.image_size, self.image_size]

    def split_file(self, split: str) -> str:
        """The file stem that holds ``split`` (``"test"`` -> ``"val"`` where so mapped)."""
        return self.splits.get(split, split)

    def config(self) -> dict[str, Any]:
        """The model folder ``config.json`` keys this data set decides: ``dataset``,
        ``classes``, ``mean``, ``std``, ``input_size``."""
        return {
            "dataset": self.name,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
        }


_DATASETS: dict[str, DatasetSpec] = {}
_DEFAULT: list[str] = []


def register_dataset(spec: DatasetSpec, *, default: bool = False) -> DatasetSpec:
    """Register ``spec`` under ``spec.name``; a name already registered is refused with a
    ``ValueError``. ``default=True`` makes it the default data set (only one may be)."""
    if spec.name in _DATASETS:
        raise ValueError(f"data set {spec.name!r} is already registered; pick another name")
    if default and _DEFAULT:
        raise ValueError(f"the default data set is already {_DEFAULT[0]!r}")
    _DATASETS[spec.name] = spec
    if default:
        _DEFAULT.append(spec.name)
    return spec


def unregister_dataset(name: str) -> None:
    """Remove a registered data set (for tests and plugins); the default cannot be removed."""
    if name in _DEFAULT:
        raise ValueError(f"{name!r} is the default data set")
    _DATASETS.pop(name, None)


def list_datasets() -> list[str]:
    """Registered data set names, sorted."""
    return sorted(_DATASETS)


def get_dataset(name: str | DatasetSpec) -> DatasetSpec:
    """The spec registered as ``name`` (a spec passes through); ``ValueError`` otherwise."""
    if isinstance(name, DatasetSpec):
        return name
    try:
        return _DATASETS[name]
    except KeyError:
        known = ", ".join(list_datasets())
        raise ValueError(f"unknown data set {name!r}; known: {known}") from None


def default_dataset() -> DatasetSpec:
    """The default data set (see the module docstring)."""
    if not _DEFAULT:
        raise RuntimeError("no default data set registered (import rws_hub.datasets)")
    return _DATASETS[_DEFAULT[0]]


def dataset_name_of(config: Mapping[str, Any]) -> str | None:
    """The data set a model folder config names: ``dataset``, else ``metrics.dataset``, else
    ``recipe.dataset``; None when it names none."""
    for where in (config, config.get("metrics") or {}, config.get("recipe") or {}):
        if isinstance(where, Mapping) and where.get("dataset"):
            return str(where["dataset"])
    return None


def dataset_of(config: Mapping[str, Any]) -> DatasetSpec | None:
    """The registered spec of the data set a model folder config was made for.

    By name (:func:`dataset_name_of`) when the config names one that is registered; when it
    names none, the registered data set with the config's ``classes`` (the default data set
    first), or the default data set when the config has no ``classes`` either. None when the
    config names an unregistered data set or its classes match none.
    """
    name = dataset_name_of(config)
    if name is not None:
        return _DATASETS.get(name)
    classes = config.get("classes")
    if classes is None:
        return default_dataset() if _DEFAULT else None
    order = _DEFAULT + [n for n in _DATASETS if n not in _DEFAULT]
    for n in order:
        if list(_DATASETS[n].classes) == [str(c) for c in classes]:
            return _DATASETS[n]
    return None
