"""ResNets for 32x32 inputs: a 3x3 stem without max-pool, then torchvision-style stages.

* ``resnet18_cifar`` / ``resnet34_cifar`` (basic blocks, 64-128-256-512 channels) and
  ``resnet50_cifar`` (bottlenecks, expansion 4), each with a ``width`` multiplier;
* ``resnet20_cifar`` (He et al.'s CIFAR ResNet: 3 stages of 3 basic blocks, 16-32-64
  channels), small enough to train well on a CPU.

Module names follow torchvision (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer2.0.downsample.0``/``.1``, ``fc``), so unit selection and signatures read the same on
these and on torchvision's ResNets. Every model takes float images in [0, 1] and normalises
inside (``mean``/``std`` from the caller; identity when omitted).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rws_hub.archs.normalize import Normalize
from rws_hub.archs.registry import register_model

__all__ = ["ResNetCifar", "BasicBlock", "Bottleneck"]


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm; a 1x1 conv + batch norm shortcut when the shape changes."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), each with batch norm; projection shortcut as needed."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNetCifar(nn.Module):
    """A ResNet for small images: 3x3 stem (stride 1, no max-pool), ``len(blocks)`` stages
    (the first at stride 1, the others halving the resolution), global average pooling, one
    linear classifier. Zero-initialised last batch norm of each block (residuals start as
    identities)."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: Sequence[int],
        channels: Sequence[int],
        num_classes: int = 10,
        width: float = 1.0,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        chans = [max(1, round(c * width)) for c in channels]
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, chans[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(chans[0])
        self.relu = nn.ReLU(inplace=True)
        cin = chans[0]
        for i, (n, planes) in enumerate(zip(blocks, chans, strict=True), 1):
            layers = []
            for j in range(n):
                layers.append(block(cin, planes, 2 if (j == 0 and i > 1) else 1))
                cin = planes * block.expansion
            self.add_module(f"layer{i}", nn.Sequential(*layers))
        self.stages = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            last = getattr(m, "bn3", None) or getattr(m, "bn2", None)
            if isinstance(m, (BasicBlock, Bottleneck)) and last is not None:
                nn.init.zeros_(last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        for i in range(1, self.stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


_WIDE = (64, 128, 256, 512)


@register_model("resnet18_cifar")
def resnet18_cifar(num_classes: int = 10, width: float = 1.0, **kwargs) -> ResNetCifar:
    """ResNet-18 for 32x32 inputs (basic blocks 2-2-2-2)."""
    return ResNetCifar(BasicBlock, (2, 2, 2, 2), _WIDE, num_classes, width, **kwargs)


@register_model("resnet34_cifar")
def resnet34_cifar(num_classes: int = 10, width: float = 1.0, **kwargs) -> ResNetCifar:
    """ResNet-34 for 32x32 inputs (basic blocks 3-4-6-3)."""
    return ResNetCifar(BasicBlock, (3, 4, 6, 3), _WIDE, num_classes, width, **kwargs)


@register_model("resnet50_cifar")
def resnet50_cifar(num_classes: int = 10, width: float = 1.0, **kwargs) -> ResNetCifar:
    """ResNet-50 for 32x32 inputs (bottlenecks 3-4-6-3, expansion 4), the paper's ResNet."""
    return ResNetCifar(Bottleneck, (3, 4, 6, 3), _WIDE, num_classes, width, **kwargs)


# recommended K: the K sweep in docs/results/cifar10-resnet20 (the stem and the first 15 units)
@register_model("resnet20_cifar", recommended_units=16)
def resnet20_cifar(num_classes: int = 10, width: float = 1.0, **kwargs) -> ResNetCifar:
    """ResNet-20 (3 stages of 3 basic blocks, 16-32-64 channels, 0.27 M parameters)."""
    return ResNetCifar(BasicBlock, (3, 3, 3), (16, 32, 64), num_classes, width, **kwargs)
