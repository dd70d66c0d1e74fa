"""Deprecated: the former home of the architectures. Import from :mod:`rws_hub.archs`
(registry), :mod:`rws_hub.archs.vgg` (the VGG builders), :mod:`rws_hub.archs.normalize` and,
for a data set's class names and normalisation, :mod:`rws_hub.datasets` (its spec).

This module only re-exports those names while the last importers move; it will be removed.
"""

from __future__ import annotations

from rws_hub.archs.normalize import Normalize
from rws_hub.archs.registry import create_model, list_models, model_from_config, register_model
from rws_hub.archs.vgg import VGG16_PLAN, VGGCifar, vgg16_bn_cifar, vgg16_cifar

# Deprecated copies of the data set spec's values (archs may not import datasets, which sits on
# the same layer); tests/unit/archs checks they equal rws_hub.datasets.get_dataset("cifar10").
# Remove with this module once its importers read the spec.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "VGG16_PLAN",
    "Normalize",
    "VGGCifar",
    "create_model",
    "list_models",
    "model_from_config",
    "register_model",
    "vgg16_bn_cifar",
    "vgg16_cifar",
]
