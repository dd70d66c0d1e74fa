"""A toy architecture, registered by importing this one module."""

from __future__ import annotations

import torch
from torch import nn

from rws_hub.archs import Normalize, register_model

NAME = "toynet_ext"


class ToyNet(nn.Module):
    """Conv + batch norm + conv, global pooling, a linear head; normalises inside."""

    def __init__(self, num_classes: int = 10, width: float = 1.0, mean=(0.0,) * 3, std=(1.0,) * 3):
        super().__init__()
        c = max(2, round(8 * width))
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(self.normalize(x))))
        return self.head(torch.relu(self.conv2(x)).mean((2, 3)))


register_model(NAME)(ToyNet)
