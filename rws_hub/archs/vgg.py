"""VGG-16 for 32x32 inputs, as the RWS paper uses it (``vgg16_cifar``, ``vgg16_bn_cifar``).

The names are registry names recorded in model folders' ``config.json``: they stay as they
are. The models take float images in [0, 1], shape (N, 3, H, W), and normalise inside with the
``mean`` / ``std`` their caller gives (the data set's; no normalisation when omitted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rws_hub.archs.normalize import Normalize
from rws_hub.archs.registry import register_model

# VGG-16's 13 conv layers ("M" = 2x2 max pool), as in the paper's 32x32 variant.
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

#: Normalisation used when a caller gives none: the identity.
IDENTITY_MEAN: tuple[float, float, float] = (0.0, 0.0, 0.0)
IDENTITY_STD: tuple[float, float, float] = (1.0, 1.0, 1.0)


class VGGCifar(nn.Module):
    """VGG-16 for 32x32 inputs as the RWS paper uses it: 13 conv layers with ReLU, no batch
    norm, global average pooling, one ``Linear(channels, classes)`` classifier.

    ``width`` scales every conv layer's channels (0.5 = half width, 3.7 M parameters);
    ``mean`` / ``std`` are the data set's normalisation (``None``: identity).
    """

    def __init__(
        self,
        num_classes: int = 10,
        width: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        plan: Sequence[int | str] = VGG16_PLAN,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(
            IDENTITY_MEAN if mean is None else mean, IDENTITY_STD if std is None else std
        )
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


# recommended K: the K sweeps in docs/results.md (section 5, and its report for the BN entry)
@register_model("vgg16_cifar", recommended_units=6)
def vgg16_cifar(num_classes: int = 10, width: float = 1.0, **kwargs: Any) -> nn.Module:
    """VGG-16 (32x32 variant, no BN, GAP + one linear layer); see :class:`VGGCifar`."""
    return VGGCifar(num_classes=num_classes, width=width, **kwargs)


@register_model("vgg16_bn_cifar", recommended_units=5)
def vgg16_bn_cifar(num_classes: int = 10, width: float = 1.0, **kwargs: Any) -> nn.Module:
    """VGG-16 with batch norm after every conv (32x32 variant, GAP + one linear layer)."""
    return VGGCifar(num_classes=num_classes, width=width, batch_norm=True, **kwargs)
