"""A toy quantization scheme, registered by importing this one module: sign times the group's
mean magnitude (codes -1, 0, 1)."""

from __future__ import annotations

import torch

from rws_hub.core.quantization import QuantScheme, register_scheme


class SignScheme(QuantScheme):
    name = "toysign"

    def encode(self, x: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = x.abs().mean(dim=1).to(torch.float32)
        return torch.sign(x).to(torch.int8), scale, torch.zeros_like(scale)

    def decode(
        self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int
    ) -> torch.Tensor:
        return codes * scale + offset


SCHEME = register_scheme(SignScheme())
