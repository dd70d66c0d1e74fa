"""Backbone architectures of the zoo, and a small registry to build them from a config.

Every model here takes float images in [0, 1], shape (N, 3, H, W), and normalises inside, so
users never handle mean/std themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

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

# VGG-16's 13 conv layers ("M" = 2x2 max pool), as in the paper's CIFAR variant.
VGG16_PLAN: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as a layer (buffers, so it travels with the weights)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class VGGCifar(nn.Module):
    """VGG-16 for 32x32 inputs as the RWS paper uses it: 13 conv layers with ReLU, no batch
    norm, global average pooling, one ``Linear(channels, classes)`` classifier.

    ``width`` scales every conv layer's channels (0.5 = half width, 3.7 M parameters).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
        plan: Sequence[int | str] = VGG16_PLAN,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        layers: list[nn.Module] = []
        channels = 3
        for item in plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = max(1, round(int(item) * width))
                if batch_norm:
                    layers += [
                        nn.Conv2d(channels, out, 3, padding=1, bias=False),
                        nn.BatchNorm2d(out),
                        nn.ReLU(inplace=True),
                    ]
                else:
                    layers += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(inplace=True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(torch.flatten(self.pool(x), 1))


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a model builder under ``name`` (timm-style)."""

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


@register_model("vgg16_cifar")
def vgg16_cifar(num_classes: int = 10, width: float = 1.0, **kwargs: Any) -> nn.Module:
    """VGG-16 (CIFAR variant, no BN, GAP + one linear layer); see :class:`VGGCifar`."""
    return VGGCifar(num_classes=num_classes, width=width, **kwargs)


@register_model("vgg16_bn_cifar")
def vgg16_bn_cifar(num_classes: int = 10, width: float = 1.0, **kwargs: Any) -> nn.Module:
    """VGG-16 with batch norm after every conv (CIFAR variant, GAP + one linear layer)."""
    return VGGCifar(num_classes=num_classes, width=width, batch_norm=True, **kwargs)


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_REGISTRY)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build an untrained model by registry name, e.g. ``create_model("vgg16_cifar", width=0.5)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Build the architecture a model folder's ``config.json`` describes (untrained)."""
    kwargs: dict[str, Any] = {"num_classes": len(config["classes"])}
    if "width" in config:
        kwargs["width"] = config["width"]
    if "mean" in config and "std" in config:
        kwargs["mean"], kwargs["std"] = config["mean"], config["std"]
    return create_model(config["architecture"], **kwargs)
