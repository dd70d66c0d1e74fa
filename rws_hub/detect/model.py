"""The corruption detector module: :class:`CorruptionDetector`, its spec and its files.

Design (``kind = "conv1-stats-mlp"``): a cheap feature vector per image, then a small MLP head
over 20 classes, ``"clean"`` + the 19 corruptions.

* **Backbone features**: the backbone's *first* conv layer (normalisation + conv1, a frozen copy
  of the clean backbone's weights, a few KB) evaluated at every second pixel, summarised per
  channel by :func:`~rws_hub.detect.features.conv_features`. For the half-width VGG-16 conv1 is
  ~1% of the forward FLOPs.
* **Image statistics**: :func:`~rws_hub.detect.features.image_features` (40 numbers).
* The features are standardised with the training set's mean/std (buffers), then
  ``Linear(F, hidden) → ReLU → Linear(hidden, hidden) → ReLU → Linear(hidden, 20)``.

The whole detector, frozen conv1 included, is one ``detector.safetensors``; its description
(:meth:`CorruptionDetector.spec` plus the ``"auto"`` rule, measured accuracy and cost) is
``detector.json`` in a standalone detector folder, or ``config["detector"]`` of a model folder.
:func:`save_detector` / :func:`load_detector` read and write both (safetensors only).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from rws_hub.archs import Normalize
from rws_hub.datasets import default_dataset
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS
from rws_hub.detect.features import (
    FEATURE_VERSION,
    N_IMAGE_FEATURES,
    conv_features,
    image_features,
)
from rws_hub.errors import ArtifactError
from rws_hub.io.folder import ModelFolder

__all__ = [
    "CLEAN",
    "CONFIG_NAME",
    "DETECTOR_KIND",
    "WEIGHTS_NAME",
    "CorruptionDetector",
    "detector_classes",
    "load_detector",
    "save_detector",
]

CLEAN = "clean"
"""The detector's class for an uncorrupted image (always its first class)."""
DETECTOR_KIND = "conv1-stats-mlp"
"""The ``kind`` written into a detector's spec; others are refused when loading."""
CONFIG_NAME = "detector.json"
"""The config file beside ``detector.safetensors`` in a standalone detector folder."""
WEIGHTS_NAME = "detector.safetensors"
"""The detector's weights file (in a standalone detector folder and in a model folder)."""


def detector_classes(corruptions: Sequence[str] | None = None) -> list[str]:
    """``["clean", *corruptions]`` (default: the 19 corruptions of :mod:`rws_hub.datasets.corruptions`)."""
    if corruptions is None:
        corruptions = ALL_CORRUPTIONS
    return [CLEAN, *corruptions]


def _first_conv(backbone: nn.Module) -> nn.Conv2d | None:
    """The first Conv2d of ``backbone`` (registration order), or None."""
    return next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)


class CorruptionDetector(nn.Module):
    """Features (frozen backbone conv1 + image statistics) → MLP → logits over :attr:`classes`.

    Args:
        classes: class names, ``"clean"`` first (see :func:`detector_classes`).
        conv_channels: output channels of the backbone's first conv (3x3, padding 1).
        conv_stride: evaluate conv1 at every ``conv_stride``-th pixel (2: a quarter of the
            positions; the outputs are exactly the backbone's conv1 outputs there).
        dropout: dropout after each hidden layer while training.
        hidden: width of the head's two hidden layers.
        mean, std: the backbone's input normalisation (applied before conv1, as in the model;
            default: the default data set's, until :meth:`set_backbone_conv` copies the
            backbone's).
    """

    def __init__(
        self,
        classes: Sequence[str] | None = None,
        conv_channels: int = 32,
        hidden: int = 256,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        conv_stride: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.classes = list(classes) if classes is not None else detector_classes()
        if (
            not self.classes
            or self.classes[0] != CLEAN
            or len(set(self.classes)) != len(self.classes)
        ):
            raise ValueError(f"classes must be distinct and start with {CLEAN!r}")
        self.conv_channels = int(conv_channels)
        self.hidden = int(hidden)
        self.normalize = Normalize(
            default_dataset().mean if mean is None else mean,
            default_dataset().std if std is None else std,
        )
        self.conv_stride = int(conv_stride)
        self.conv = nn.Conv2d(3, self.conv_channels, 3, padding=1, stride=self.conv_stride)
        n_feat = self.num_features
        self.register_buffer("feature_mean", torch.zeros(n_feat))
        self.register_buffer("feature_std", torch.ones(n_feat))
        self.dropout = float(dropout)
        self.head = nn.Sequential(
            nn.Linear(n_feat, self.hidden),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, self.hidden),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, len(self.classes)),
        )
        self.conv.requires_grad_(False)

    @property
    def num_features(self) -> int:
        """Length of the raw feature vector."""
        return 4 * self.conv_channels + N_IMAGE_FEATURES

    def has_backbone_conv(self, backbone: nn.Module) -> bool:
        """Whether the frozen conv1 is ``backbone``'s first Conv2d (weights and bias, a missing
        bias being zero), i.e. the detector was made for this backbone."""
        first = _first_conv(backbone)
        if first is None or not torch.equal(self.conv.weight, first.weight.detach().float()):
            return False
        bias = torch.zeros_like(self.conv.bias) if first.bias is None else first.bias.float()
        return torch.equal(self.conv.bias, bias.detach())

    def set_backbone_conv(self, backbone: nn.Module) -> None:
        """Copy the first Conv2d (3 → C, 3x3, padding 1) of ``backbone`` and its normalisation."""
        first = _first_conv(backbone)
        if first is None or tuple(first.weight.shape) != tuple(self.conv.weight.shape):
            shape = None if first is None else tuple(first.weight.shape)
            raise ValueError(
                f"backbone's first conv has weight shape {shape}, the detector needs "
                f"{tuple(self.conv.weight.shape)}"
            )
        with torch.no_grad():
            self.conv.weight.copy_(first.weight.detach().float())
            if first.bias is not None:
                self.conv.bias.copy_(first.bias.detach().float())
            else:
                self.conv.bias.zero_()
            norm = getattr(backbone, "normalize", None)
            if isinstance(norm, Normalize):
                self.normalize.mean.copy_(norm.mean)
                self.normalize.std.copy_(norm.std)

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        """Unstandardised features ``(N, F)`` of float images ``(N, 3, H, W)`` in [0, 1]."""
        x = images.float()
        y = self.conv(self.normalize(x))
        return torch.cat([conv_features(y), image_features(x)], 1)

    def head_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from raw features (standardised here)."""
        z = (features - self.feature_mean) / self.feature_std
        return self.head(z)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, classes)``."""
        return self.head_logits(self.raw_features(images))

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, classes)`` (rows sum to 1)."""
        was = self.training
        self.eval()
        try:
            return torch.softmax(self(images).float(), 1)
        finally:
            self.train(was)

    # -- description / persistence -----------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """What is needed to rebuild the module (goes into ``config["detector"]``)."""
        return {
            "kind": DETECTOR_KIND,
            "feature_version": FEATURE_VERSION,
            "classes": list(self.classes),
            "conv_channels": self.conv_channels,
            "conv_stride": self.conv_stride,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "features": {
                "conv1": ["mean", "log_std", "log_mean_abs_highpass", "mean_relu"],
                "image": N_IMAGE_FEATURES,
                "total": self.num_features,
            },
        }

    @classmethod
    def from_spec(
        cls, spec: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None
    ) -> CorruptionDetector:
        """Rebuild from :meth:`spec` (and load ``state``). Refuses a foreign kind or feature
        version and a state whose names or shapes differ (:class:`ArtifactError`)."""
        if spec.get("kind") != DETECTOR_KIND:
            raise ArtifactError(
                f"{WEIGHTS_NAME}: detector kind {spec.get('kind')!r} is not {DETECTOR_KIND!r}"
            )
        if int(spec.get("feature_version", -1)) != FEATURE_VERSION:
            raise ArtifactError(
                f"{WEIGHTS_NAME}: feature version {spec.get('feature_version')!r}, this rws-hub "
                f"computes version {FEATURE_VERSION}"
            )
        try:
            det = cls(
                classes=spec["classes"],
                conv_channels=int(spec["conv_channels"]),
                hidden=int(spec["hidden"]),
                conv_stride=int(spec.get("conv_stride", 1)),
                dropout=float(spec.get("dropout", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{WEIGHTS_NAME}: bad detector config ({exc})") from exc
        if state is not None:
            det.load_checked(state)
        return det.eval()

    def load_checked(self, state: Mapping[str, torch.Tensor]) -> None:
        """``load_state_dict`` that refuses missing, extra or differently shaped tensors."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise ArtifactError(
                f"{WEIGHTS_NAME}: tensors do not match the detector config "
                f"(missing {missing[:3]}, unexpected {extra[:3]})"
            )
        for k, v in own.items():
            if tuple(state[k].shape) != tuple(v.shape):
                raise ArtifactError(
                    f"{WEIGHTS_NAME}: {k} has shape {tuple(state[k].shape)}, the detector "
                    f"config needs {tuple(v.shape)}"
                )
        self.load_state_dict({k: state[k].float() for k in own}, strict=True)


def save_detector(
    directory: str | Path, detector: CorruptionDetector, config: Mapping[str, Any]
) -> Path:
    """Write ``detector.safetensors`` and ``detector.json`` (``config`` merged over
    :meth:`CorruptionDetector.spec`) into ``directory``; returns the weights' path."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in detector.state_dict().items()}
    save_file(state, str(d / WEIGHTS_NAME), metadata={"format": "pt", "kind": DETECTOR_KIND})
    cfg = detector.spec() | dict(config)
    (d / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return d / WEIGHTS_NAME


def load_detector(
    source: str | Path | Any, *, device: str | torch.device = "cpu"
) -> tuple[CorruptionDetector, dict[str, Any]]:
    """A detector and its config from a standalone folder (``detector.safetensors`` +
    ``detector.json``) or a loaded :class:`~rws_hub.io.folder.ModelFolder` (its verified
    ``detector.safetensors`` and ``config["detector"]``)."""
    if isinstance(source, ModelFolder):
        cfg = source.config.get("detector")
        if not isinstance(cfg, Mapping):
            raise ArtifactError("config.json: no 'detector' entry for detector.safetensors")
        state = source.detector_state()
    else:
        d = Path(source)
        try:
            cfg = json.loads((d / CONFIG_NAME).read_text(encoding="utf-8"))
            state = load_file(str(d / WEIGHTS_NAME))
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{d}: not a detector folder ({exc})") from exc
    det = CorruptionDetector.from_spec(cfg, {k: v.cpu() for k, v in state.items()})
    return det.to(device), dict(cfg)
