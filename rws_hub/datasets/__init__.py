"""Data sets: specs (classes, normalisation, size) in a registry, loaders for the layouts users
have, and the corruptions.

Importing this package registers the built-in data sets (one module each); a new data set is
one module that calls :func:`register_dataset` (see ``docs/architecture.md``).
"""

from rws_hub.datasets import cifar10, tinyimagenet32
from rws_hub.datasets.spec import (
    DatasetSpec,
    dataset_name_of,
    dataset_of,
    default_dataset,
    get_dataset,
    list_datasets,
    register_dataset,
    unregister_dataset,
)

__all__ = [
    "DatasetSpec",
    "cifar10",
    "dataset_name_of",
    "dataset_of",
    "default_dataset",
    "get_dataset",
    "list_datasets",
    "register_dataset",
    "tinyimagenet32",
    "unregister_dataset",
]
