"""Architectures: a registry of model builders (:mod:`.registry`) and the builders themselves.

Importing this package registers the built-in builders (:mod:`.vgg`, :mod:`.resnet`) and
the ``torchvision.<name>`` family (:mod:`.torchvision_models`), so :func:`create_model`
knows them wherever it is imported from. A new architecture is one module that decorates its
builder with :func:`register_model` (see ``docs/architecture.md``).
"""

from rws_hub.archs import resnet, torchvision_models, vgg
from rws_hub.archs.normalize import Normalize
from rws_hub.archs.registry import (
    ModelEntry,
    choose_units,
    create_model,
    get_model_builder,
    list_models,
    model_from_config,
    model_kwargs,
    recommended_units,
    register_family,
    register_model,
    unregister_model,
)

__all__ = [
    "ModelEntry",
    "Normalize",
    "choose_units",
    "create_model",
    "get_model_builder",
    "list_models",
    "model_from_config",
    "model_kwargs",
    "recommended_units",
    "register_family",
    "register_model",
    "unregister_model",
    "resnet",
    "torchvision_models",
    "vgg",
]
