"""The corruption detector behind ``"auto"``: which corruption (if any) is in an image?

Design (``kind = "conv1-stats-mlp"``): a cheap feature vector per image, then a small MLP head
over 20 classes, ``"clean"`` + the 19 corruptions.

* **Backbone features**: the backbone's *first* conv layer (normalisation + conv1, a frozen copy
  of the clean backbone's weights, a few KB) evaluated at every second pixel and, per channel, the mean, the standard
  deviation, the mean absolute horizontal first difference (a high-pass) and the mean ReLU.
  For the half-width VGG-16 conv1 is ~1% of the forward FLOPs.
* **Image statistics** (:func:`image_features`, 40 numbers): per-channel mean/std, saturation
  and value, clipped-pixel fractions, Laplacian energy and its tail weight, gradient energy,
  flat-step fraction, 8x8 block-boundary ratio (JPEG), radial log power spectrum (blur, noise,
  pixelation), local 4x4 contrast, cross-channel correlation of the high-pass (colour vs
  luminance noise).
* The features are standardised with the training set's mean/std (buffers), then
  ``Linear(F, hidden) → ReLU → Linear(hidden, hidden) → ReLU → Linear(hidden, 20)``.

The whole detector, frozen conv1 included, is one ``detector.safetensors``; its description
(classes, feature spec, the ``"auto"`` rule, measured accuracy and cost) is ``config["detector"]``
of the model folder. :class:`AutoPatcher` is the engine's ``detector`` hook: it runs the
detector and turns probabilities into a mix with an :class:`AutoRule`. Training
(:func:`train_detector`) is resumable: corrupted images, features and head checkpoints are
cached in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from rws_hub.archs import Normalize
from rws_hub.core.mix import Mix
from rws_hub.core.seeding import seeded_generator
from rws_hub.datasets import default_dataset
from rws_hub.datasets.arrays import corrupt_blocks, load_images
from rws_hub.datasets.corruptions import ALL_CORRUPTIONS, corrupt_uint8
from rws_hub.errors import ArtifactError
from rws_hub.io.folder import ModelFolder

__all__ = [
    "CLEAN",
    "DETECTOR_KIND",
    "AutoPatcher",
    "AutoRule",
    "CorruptionDetector",
    "Detection",
    "detector_classes",
    "image_features",
    "load_detector",
    "rule_mix",
    "save_detector",
    "train_detector",
]

CLEAN = "clean"
DETECTOR_KIND = "conv1-stats-mlp"
FEATURE_VERSION = 1
N_IMAGE_FEATURES = 40
CONFIG_NAME = "detector.json"  # beside detector.safetensors in a standalone detector folder
WEIGHTS_NAME = "detector.safetensors"


def detector_classes(corruptions: Sequence[str] | None = None) -> list[str]:
    """``["clean", *corruptions]`` (default: the 19 corruptions of :mod:`rws_hub.datasets.corruptions`)."""
    if corruptions is None:
        corruptions = ALL_CORRUPTIONS
    return [CLEAN, *corruptions]


# --------------------------------------------------------------------------------------------
# features

_EPS = 1e-6


def _log(t: torch.Tensor) -> torch.Tensor:
    return torch.log(t + _EPS)


@lru_cache(maxsize=8)
def _radial_bins(h: int, w: int, bins: int, device: torch.device) -> torch.Tensor:
    """(bins, H*(W//2+1)) ring-averaging weights over the ``rfft2`` frequency grid (no DC)."""
    fy = torch.fft.fftfreq(h, device=device).view(-1, 1)
    fx = torch.fft.rfftfreq(w, device=device).view(1, -1)
    r = torch.sqrt(fx**2 + fy**2).flatten() / math.sqrt(0.5)  # 0..1
    idx = torch.clamp((r * bins).long(), max=bins - 1)
    masks = torch.stack([(idx == b) for b in range(bins)]).float()
    masks[:, 0] = 0.0  # no DC
    return masks / masks.sum(1, keepdim=True).clamp_min(1.0)


def image_features(x: torch.Tensor) -> torch.Tensor:
    """40 statistics per image of float images ``(N, 3, H, W)`` in [0, 1] → ``(N, 40)``."""
    x = x.float()
    n, _, h, w = x.shape
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    feats: list[torch.Tensor] = []
    m1 = x.mean((2, 3))
    feats += [m1, 0.5 * _log((x * x).mean((2, 3)) - m1 * m1)]  # 6: mean, log std
    mx, mn = x.amax(1), x.amin(1)
    sat = (mx - mn) / mx.clamp_min(1e-3)
    s1 = sat.mean((1, 2))
    feats += [s1, (sat * sat).mean((1, 2)) - s1 * s1, mx.mean((1, 2))]  # 3
    feats += [(mn <= 2 / 255).float().mean((1, 2)), (mx >= 253 / 255).float().mean((1, 2))]  # 2
    sdx = gray[..., :, 1:] - gray[..., :, :-1]
    sdy = gray[..., 1:, :] - gray[..., :-1, :]
    lap = (sdx[..., 1:-1, 1:] - sdx[..., 1:-1, :-1]) + (sdy[..., 1:, 1:-1] - sdy[..., :-1, 1:-1])
    la = lap.abs().mean((1, 2, 3))
    a2 = (lap * lap).mean((1, 2, 3))
    feats += [_log(la), _log(a2), _log(lap.pow(4).mean((1, 2, 3)) / (a2 * a2 + _EPS))]  # 3
    dx, dy = sdx.abs(), sdy.abs()
    mdx, mdy = dx.mean((1, 2, 3)), dy.mean((1, 2, 3))
    feats += [_log(mdx), _log(mdy)]  # 2
    feats += [(dx < 0.5 / 255).float().mean((1, 2, 3)), (dy < 0.5 / 255).float().mean((1, 2, 3))]
    # 8x8 block boundaries (JPEG): steps across columns/rows 7|8, 15|16, ... vs all steps.
    feats += [
        dx[..., :, 7::8].mean((1, 2, 3)) / (mdx + 1e-4),
        dy[..., 7::8, :].mean((1, 2, 3)) / (mdy + 1e-4),
    ]  # 2
    g0 = gray[:, 0] - gray.mean((2, 3))[:, :, None]
    spec = torch.fft.rfft2(g0).abs().pow(2)  # (N, H, W//2+1)
    feats.append(_log(spec.flatten(1) @ _radial_bins(h, w, 12, x.device).T))  # 12
    blocks = F.avg_pool2d(gray, 4)
    bvar = (F.avg_pool2d(gray * gray, 4) - blocks * blocks).clamp_min(0).flatten(1)
    lbstd = 0.5 * _log(bvar)
    feats += [_log(bvar.sqrt().mean(1)), lbstd.std(1), (bvar < 1e-4).float().mean(1)]  # 3
    hp = (x[..., :, 2:] + x[..., :, :-2] - 2 * x[..., :, 1:-1]).flatten(2)  # per channel
    hp = hp - hp.mean(2, keepdim=True)
    hp = hp / (hp.norm(dim=2, keepdim=True) + 1e-6)
    feats += [(hp[:, i] * hp[:, j]).sum(1) for i, j in ((0, 1), (0, 2), (1, 2))]  # 3
    g1 = gray.mean((1, 2, 3))
    feats.append(0.5 * _log((gray * gray).mean((1, 2, 3)) - g1 * g1))  # 1 (luminance contrast)
    feats.append(_log(dx.amax((1, 2, 3))))  # 1 (largest step)
    out = torch.cat([f.reshape(n, -1) for f in feats], 1)
    assert out.shape[1] == N_IMAGE_FEATURES, out.shape
    return out


def conv_features(y: torch.Tensor) -> torch.Tensor:
    """Per-channel statistics of a conv output ``(N, C, H, W)`` → ``(N, 4C)``: mean, log std,
    log mean |horizontal first difference| (a high-pass) and mean ReLU."""
    m1 = y.mean((2, 3))
    var = (y * y).mean((2, 3)) - m1 * m1
    hp = (y[..., :, 1:] - y[..., :, :-1]).abs().mean((2, 3))
    return torch.cat([m1, 0.5 * _log(var.clamp_min(0)), _log(hp), y.relu().mean((2, 3))], 1)


# --------------------------------------------------------------------------------------------
# the detector


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

    def set_backbone_conv(self, backbone: nn.Module) -> None:
        """Copy the first Conv2d (3 → C, 3x3, padding 1) of ``backbone`` and its normalisation."""
        first = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
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


# --------------------------------------------------------------------------------------------
# the "auto" rule


@dataclass(frozen=True)
class AutoRule:
    """How detector probabilities become a mix.

    * ``kind="top1"``: the most probable class; nothing when it is ``"clean"`` or its
      probability is below ``threshold``; else that corruption's signature at
      ``alpha`` = its default α (``strength="one"``) or default α × p (``"probability"``).
    * ``kind="weighted"``: the ``top_k`` most probable *corruptions* whose probability is at
      least ``threshold``, each at default α × p (clean's probability mass is left unpatched).

    Either kind applies nothing when ``"clean"`` has probability ≥ ``clean_veto``.
    """

    kind: str = "top1"
    threshold: float = 0.5
    strength: str = "one"
    top_k: int = 3
    clean_veto: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("top1", "weighted"):
            raise ValueError(f"rule kind must be 'top1' or 'weighted', not {self.kind!r}")
        if self.strength not in ("one", "probability"):
            raise ValueError(f"strength must be 'one' or 'probability', not {self.strength!r}")
        if not 0.0 <= self.threshold <= 1.0 or not 0.0 <= self.clean_veto <= 1.0:
            raise ValueError("threshold and clean_veto must lie in [0, 1]")
        if self.top_k < 1:
            raise ValueError("top_k must be at least 1")

    @property
    def label(self) -> str:
        """Short display name, e.g. ``top1@0.5`` or ``weighted3@0.1``."""
        veto = "" if self.clean_veto >= 1.0 else f",veto{self.clean_veto:g}"
        if self.kind == "top1":
            suffix = "" if self.strength == "one" else "×p"
            return f"top1{suffix}@{self.threshold:g}{veto}"
        return f"weighted{self.top_k}@{self.threshold:g}{veto}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AutoRule:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def rule_mix(
    probabilities: Mapping[str, float],
    rule: AutoRule = AutoRule(),
    *,
    available: Collection[str] | None = None,
    alphas: Mapping[str, float] | None = None,
) -> Mix:
    """The mix ``rule`` picks for one image's class probabilities (a pure function).

    Corruptions without a signature in ``available`` (when given) are never chosen (``top1``
    falls to the next most probable class). ``alphas`` are the signatures' default α (1.0 when
    absent). Alphas are rounded to 2 decimals so that similar images share patched weights.
    """
    alphas = alphas or {}
    if float(probabilities.get(CLEAN, 0.0)) >= rule.clean_veto:
        return Mix()
    ranked = sorted(probabilities.items(), key=lambda kv: (-kv[1], kv[0]))
    usable = [(c, float(p)) for c, p in ranked if c == CLEAN or available is None or c in available]
    if rule.kind == "top1":
        if not usable:
            return Mix()
        top, p = usable[0]
        if top == CLEAN or p < rule.threshold:
            return Mix()
        scale = 1.0 if rule.strength == "one" else p
        return Mix({top: round(alphas.get(top, 1.0) * scale, 2)})
    chosen = [(c, p) for c, p in usable if c != CLEAN and p >= rule.threshold][: rule.top_k]
    mix = {c: round(alphas.get(c, 1.0) * p, 2) for c, p in chosen}
    return Mix(mix).without_zeros()


@dataclass(frozen=True)
class Detection:
    """One image's ``"auto"`` answer: the mix applied and the top detected classes."""

    mix: Mix
    top: tuple[tuple[str, float], ...] = field(default_factory=tuple)

    def to_json(self) -> list[dict[str, Any]]:
        """``[{"class": name, "probability": p}, ...]`` (most probable first)."""
        return [{"class": c, "probability": round(p, 4)} for c, p in self.top]


class AutoPatcher:
    """The engine's ``detector`` hook: images → one mix per image, via a detector and a rule.

    Args:
        detector: a trained :class:`CorruptionDetector` (moved to ``device``).
        rule: the :class:`AutoRule` (default: the detector config's rule or ``AutoRule()``).
        available: names of the signatures that can be applied (others are never chosen).
        alphas: default α of each signature.
        report_top: how many top classes :meth:`detect` reports.
        device: where the detector runs (default: where its parameters are).
    """

    def __init__(
        self,
        detector: CorruptionDetector,
        rule: AutoRule | None = None,
        *,
        available: Collection[str] | None = None,
        alphas: Mapping[str, float] | None = None,
        report_top: int = 3,
        device: str | torch.device | None = None,
    ) -> None:
        self.detector = detector.eval()
        if device is not None:
            self.detector.to(device)
        self.rule = rule or AutoRule()
        self.available = set(available) if available is not None else None
        self.alphas = dict(alphas or {})
        self.report_top = int(report_top)

    def detect(self, images: torch.Tensor) -> list[Detection]:
        """Per image: the chosen mix and the top classes with their probabilities."""
        dev = next(self.detector.parameters()).device
        probs = self.detector.probabilities(images.to(dev, torch.float32)).cpu()
        classes = self.detector.classes
        k = min(self.report_top, len(classes))
        out = []
        for row in probs.tolist():
            pmap = dict(zip(classes, row, strict=True))
            mix = rule_mix(pmap, self.rule, available=self.available, alphas=self.alphas)
            top = tuple(sorted(pmap.items(), key=lambda kv: -kv[1])[:k])
            out.append(Detection(mix, top))
        return out

    def __call__(self, images: torch.Tensor) -> list[Mix]:
        return [d.mix for d in self.detect(images)]


# --------------------------------------------------------------------------------------------
# persistence


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


def auto_patcher_from_folder(folder: Any, device: str | torch.device = "cpu") -> AutoPatcher:
    """The :class:`AutoPatcher` of a loaded model folder that ships a detector."""
    det, cfg = load_detector(folder, device=device)
    rule = AutoRule.from_json(cfg["rule"]) if isinstance(cfg.get("rule"), Mapping) else None
    sigs = folder.signatures
    return AutoPatcher(
        det,
        rule,
        available=set(sigs),
        alphas={n: float(getattr(s, "default_alpha", 1.0)) for n, s in sigs.items()},
    )


# --------------------------------------------------------------------------------------------
# cost


def conv_macs(model: nn.Module, size: tuple[int, int] = (32, 32)) -> int:
    """Multiply-accumulates of one forward of one image through every Conv2d and Linear of
    ``model`` (measured on the shapes a forward hook sees)."""
    total = 0

    def hook(mod: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.weight[0].numel()  # in/groups * kh * kw
            total += int(out[0].numel()) * k
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, *size))
    finally:
        for h in handles:
            h.remove()
    return total


def detector_flops(detector: CorruptionDetector, size: tuple[int, int] = (32, 32)) -> int:
    """FLOPs of one image through the detector (2 × MACs of conv1 and the head, plus an
    element-wise budget for the statistics: ~12 ops per conv1 output value, ~200 per pixel for the
    image statistics, 5·N·log2 N per FFT)."""
    h, w = size
    macs = conv_macs(detector.conv, size) + sum(
        m.in_features * m.out_features for m in detector.head if isinstance(m, nn.Linear)
    )
    positions = math.ceil(h / detector.conv_stride) * math.ceil(w / detector.conv_stride)
    elementwise = 12 * detector.conv_channels * positions + 200 * h * w
    fft = int(5 * h * w * math.log2(h * w))
    return 2 * macs + elementwise + fft


def measure_cost(
    detector: CorruptionDetector,
    backbone: nn.Module,
    *,
    batch: int = 256,
    repeats: int = 5,
    size: tuple[int, int] = (32, 32),
) -> dict[str, float]:
    """Detector vs backbone: FLOPs per image and wall time of a batch (this machine).

    The two are timed alternately, ``repeats`` times; ``time_ratio`` is the median of the
    per-round ratios, so that a machine whose load changes affects both sides alike."""
    x = torch.rand(batch, 3, *size)
    detector.eval()
    backbone.eval()

    def once(fn: Any) -> float:
        t = time.perf_counter()
        fn(x)
        return time.perf_counter() - t

    det_t, bb_t = [], []
    with torch.inference_mode():
        detector(x)
        backbone(x)
        for _ in range(repeats):
            det_t.append(once(detector))
            bb_t.append(once(backbone))
    ratios = sorted(d / b for d, b in zip(det_t, bb_t, strict=True))
    det_f = detector_flops(detector, size)
    bb_f = 2 * conv_macs(backbone, size)
    return {
        "detector_flops": det_f,
        "backbone_flops": bb_f,
        "flops_ratio": det_f / bb_f,
        "detector_ms_per_batch": 1000 * sorted(det_t)[len(det_t) // 2],
        "backbone_ms_per_batch": 1000 * sorted(bb_t)[len(bb_t) // 2],
        "time_ratio": ratios[len(ratios) // 2],
        "batch": batch,
        "threads": torch.get_num_threads(),
    }


# --------------------------------------------------------------------------------------------
# training


@dataclass
class DetectorTrainConfig:
    """What decides a detector training run (saved as ``train.json`` in the output folder)."""

    data: str = str(default_dataset().root)  # training images (rws_hub.datasets.arrays)
    images: int = 40000  # training samples (each a train image with one random class)
    heldout: int = 2000  # validation samples from train images not used for training
    heldout_start: int = 45000  # train images from here on are never used for training
    clean_share: float = 0.1  # share of samples left clean (the rest: 19 corruptions evenly)
    severities: tuple[int, ...] = (1, 2, 3, 4, 5)
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    dropout: float = 0.2
    seed: int = 0
    chunk: int = 2000  # corrupted samples cached per file


def _plan(
    cfg: DetectorTrainConfig, n: int, start: int, stop: int, key: int
) -> dict[str, torch.Tensor]:
    """Which image, class and severity each sample uses (seeded)."""
    g = seeded_generator(cfg.seed, key)
    index = torch.randint(start, stop, (n,), generator=g)
    n_corr = len(detector_classes()) - 1
    clean = torch.rand(n, generator=g) < cfg.clean_share
    label = torch.randint(1, n_corr + 1, (n,), generator=g)
    label[clean] = 0
    sevs = torch.tensor(cfg.severities)
    severity = sevs[torch.randint(0, len(sevs), (n,), generator=g)]
    return {"index": index, "label": label, "severity": severity}


def make_samples(x: torch.Tensor, plan: Mapping[str, torch.Tensor], seed: int) -> torch.Tensor:
    """uint8 images for a plan: each sample's image corrupted as its label and severity say
    (batched per corruption and severity, seeded)."""
    classes = detector_classes()
    out = x[plan["index"]].clone()
    for li in range(1, len(classes)):
        for s in plan["severity"].unique().tolist():
            rows = ((plan["label"] == li) & (plan["severity"] == s)).nonzero().flatten()
            if len(rows) == 0:
                continue
            g = torch.Generator().manual_seed(seed * 7919 + li * 101 + int(s))
            out[rows] = corrupt_uint8(out[rows], classes[li], int(s), generator=g)
    return out


def _cached_samples(
    out: Path,
    tag: str,
    cfg: DetectorTrainConfig,
    x: torch.Tensor,
    plan: dict[str, torch.Tensor],
    log: Any,
) -> torch.Tensor:
    """Corrupted samples of a plan, made chunk by chunk and cached (resumable)."""
    parts = []
    n = len(plan["index"])
    for k, s in enumerate(range(0, n, cfg.chunk)):
        path = out / "cache" / f"{tag}-{k:03d}.safetensors"
        if path.is_file():
            parts.append(load_file(str(path))["x"])
            continue
        sub = {key: v[s : s + cfg.chunk] for key, v in plan.items()}
        t = time.perf_counter()
        imgs = make_samples(x, sub, cfg.seed * 1000 + k + (500 if tag == "heldout" else 0))
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"x": imgs.contiguous()}, str(path))
        log(f"{tag}: samples {s + len(imgs)}/{n} ({time.perf_counter() - t:.1f}s)")
        parts.append(imgs)
    return torch.cat(parts)


@torch.no_grad()
def batch_features(det: CorruptionDetector, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Raw features of uint8 images ``(N, 3, H, W)``."""
    return torch.cat(
        [det.raw_features(x[i : i + batch].float().div(255)) for i in range(0, len(x), batch)]
    )


def per_class_accuracy(
    probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
) -> dict[str, float]:
    """Top-1 detector accuracy per true class (fraction), plus ``"mean"`` over classes."""
    pred = probs.argmax(1)
    out = {}
    for i, c in enumerate(classes):
        rows = labels == i
        if rows.any():
            out[c] = float((pred[rows] == i).float().mean())
    out["mean"] = sum(out.values()) / max(1, len(out))
    return out


def train_detector(
    backbone: nn.Module,
    out: str | Path,
    cfg: DetectorTrainConfig | None = None,
    *,
    log: Any = print,
) -> tuple[CorruptionDetector, dict[str, Any]]:
    """Train a detector on corrupted training images; resumable.

    The output folder holds ``train.json`` (the config), ``cache/`` (corrupted samples and
    features), ``checkpoint.safetensors`` + ``checkpoint.json`` (head and optimizer, every epoch)
    and, when done, ``detector.safetensors`` + ``detector.json``. Returns the detector and its
    config (with held-out accuracy per class).
    """
    cfg = cfg or DetectorTrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    data = load_images(cfg.data, "train")
    stop = min(cfg.heldout_start, len(data))
    if stop <= 0 or stop >= len(data) and cfg.heldout > 0:
        stop = max(1, int(len(data) * 0.9))
    train_plan = _plan(cfg, cfg.images, 0, stop, key=1)
    held_plan = _plan(cfg, cfg.heldout, stop, len(data), key=2)
    x_train = _cached_samples(out, "train", cfg, data.x, train_plan, log)
    x_held = _cached_samples(out, "heldout", cfg, data.x, held_plan, log)

    det = CorruptionDetector(
        conv_channels=next(m for m in backbone.modules() if isinstance(m, nn.Conv2d)).out_channels,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
    )
    det.set_backbone_conv(backbone)
    # Features depend on the samples and on conv1: cache them under a digest of both.
    digest = hashlib.sha256(
        det.conv.weight.detach().numpy().tobytes()
        + det.conv.bias.detach().numpy().tobytes()
        + json.dumps([cfg.images, cfg.heldout, cfg.seed, FEATURE_VERSION]).encode()
    ).hexdigest()[:16]
    fpath = out / "cache" / f"features-{digest}.safetensors"
    if fpath.is_file():
        cached = load_file(str(fpath))
        f_train, f_held = cached["train"], cached["heldout"]
    else:
        t = time.perf_counter()
        f_train = batch_features(det, x_train)
        f_held = batch_features(det, x_held)
        save_file({"train": f_train.contiguous(), "heldout": f_held.contiguous()}, str(fpath))
        log(f"features: {tuple(f_train.shape)} in {time.perf_counter() - t:.1f}s")
    det.feature_mean.copy_(f_train.mean(0))
    det.feature_std.copy_(f_train.std(0).clamp_min(1e-4))
    y_train, y_held = train_plan["label"], held_plan["label"]

    torch.manual_seed(cfg.seed)
    for m in det.head:
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    opt = torch.optim.AdamW(det.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch = 0
    ck, ckj = out / "checkpoint.safetensors", out / "checkpoint.json"
    if ck.is_file() and ckj.is_file():
        meta = json.loads(ckj.read_text())
        state = load_file(str(ck))
        det.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
        opt_state = opt.state_dict()
        for i, p in enumerate(opt_state["param_groups"][0]["params"]):
            if f"opt.{i}.exp_avg" in state:
                opt_state["state"][p] = {
                    "step": torch.tensor(float(meta["steps"])),
                    "exp_avg": state[f"opt.{i}.exp_avg"],
                    "exp_avg_sq": state[f"opt.{i}.exp_avg_sq"],
                }
        opt.load_state_dict(opt_state)
        start_epoch = int(meta["epoch"])
        log(f"resumed at epoch {start_epoch}")
    n = len(y_train)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    for epoch in range(start_epoch, cfg.epochs):
        det.head.train()
        order = torch.randperm(n, generator=seeded_generator(cfg.seed, epoch))
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            for group in opt.param_groups:  # cosine schedule
                group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            loss = F.cross_entropy(det.head_logits(f_train[rows]), y_train[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(rows)
        state = {f"head.{k}": v.detach().clone() for k, v in det.head.state_dict().items()}
        for i, p in enumerate(opt.param_groups[0]["params"]):
            st = opt.state.get(p, {})
            if "exp_avg" in st:
                state[f"opt.{i}.exp_avg"] = st["exp_avg"]
                state[f"opt.{i}.exp_avg_sq"] = st["exp_avg_sq"]
        save_file(state, str(ck))
        ckj.write_text(json.dumps({"epoch": epoch + 1, "steps": (epoch + 1) * steps_per_epoch}))
        if (epoch + 1) % 10 == 0 or epoch + 1 == cfg.epochs:
            det.head.eval()
            with torch.no_grad():
                acc = (det.head_logits(f_held).argmax(1) == y_held).float().mean()
            log(f"epoch {epoch + 1}: loss {loss_sum / n:.4f}, held-out accuracy {float(acc):.4f}")
    det.eval()
    with torch.no_grad():
        probs = torch.softmax(det.head_logits(f_held), 1)
    accs = per_class_accuracy(probs, y_held, det.classes)
    config = {
        "rule": AutoRule().to_json(),
        "accuracy": {"heldout_samples": len(y_held), "severities": list(cfg.severities), **accs},
        "training": asdict(cfg) | {"severities": list(cfg.severities)},
    }
    save_detector(out, det, config)
    log(f"wrote {out / WEIGHTS_NAME} (held-out mean per-class accuracy {accs['mean']:.4f})")
    return det, det.spec() | config


# --------------------------------------------------------------------------------------------
# measuring "auto": detector accuracy and none / auto / oracle accuracy


class CachedPredictor:
    """Top-1 predictions of an engine per ``(image key, mix)``, each computed once.

    Rules that agree on an image (e.g. "auto" and "oracle" choosing the same signature) share
    the forward pass; the engine runs every missing row with its own mix in batches.
    """

    def __init__(self, engine: Any, batch_size: int = 500) -> None:
        self.engine = engine
        self.batch_size = int(batch_size)
        self.cache: dict[tuple[Any, Mix], int] = {}
        self.forwards = 0

    def predict(
        self, keys: Sequence[Any], images: torch.Tensor, mixes: Sequence[Mix]
    ) -> torch.Tensor:
        """Predicted class per row of uint8 ``images`` under its mix."""
        todo = [
            i for i, (k, m) in enumerate(zip(keys, mixes, strict=True)) if (k, m) not in self.cache
        ]
        # Same-mix rows together so that the engine forms few, large groups.
        todo.sort(key=lambda i: str(mixes[i]))
        for s in range(0, len(todo), self.batch_size):
            rows = todo[s : s + self.batch_size]
            x = images[rows].float().div(255)
            pred = self.engine.predict(x, [mixes[i] for i in rows]).argmax(1).cpu().tolist()
            self.forwards += len(rows)
            for i, p in zip(rows, pred, strict=True):
                self.cache[(keys[i], mixes[i])] = int(p)
        return torch.tensor([self.cache[(k, m)] for k, m in zip(keys, mixes, strict=True)])


@dataclass
class Cell:
    """Images of one test condition: ``corruption`` (``"clean"``) at ``severity`` (0 = clean)."""

    corruption: str
    severity: int
    x: torch.Tensor  # uint8 (N, 3, H, W)
    y: torch.Tensor  # class labels

    @property
    def key(self) -> str:
        return self.corruption if self.severity == 0 else f"{self.corruption}@{self.severity}"


def make_cells(
    data: Any,
    corruptions: Sequence[str],
    severities: Sequence[int],
    *,
    per_cell: int | Mapping[int, int],
    clean: int,
    start: int = 0,
    seed: int = 0,
) -> list[Cell]:
    """A clean cell and one cell per (corruption, severity), from ``data`` (ImageArrays).

    Cell images are ``data`` rows ``start .. start + n`` corrupted reproducibly (``seed``);
    ``per_cell`` may give a count per severity.
    """
    cells = [Cell(CLEAN, 0, data.x[start : start + clean], data.y[start : start + clean])]
    for c in corruptions:
        for s in severities:
            n = per_cell[s] if isinstance(per_cell, Mapping) else per_cell
            x = data.x[start : start + n]
            cells.append(
                Cell(c, s, corrupt_blocks(x, c, s, seed, start), data.y[start : start + n])
            )
    return cells


def evaluate_auto(
    engine: Any,
    detector: CorruptionDetector,
    cells: Sequence[Cell],
    rules: Mapping[str, AutoRule],
    *,
    predictor: CachedPredictor | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Detector accuracy and model accuracy (percent) per cell under ``none``, ``oracle`` (the
    cell's own signature at its default α) and every rule; also what each rule applied.

    Returns ``{"cells": {key: {"corruption", "severity", "images", "detector": acc,
    "accuracy": {label: acc}, "applied": {rule: {"none": share, "own": share, "other": share}}}}}``.
    """
    pred = predictor or CachedPredictor(engine)
    sigs = engine.signatures
    available = set(sigs)
    alphas = engine.defaults
    out: dict[str, Any] = {"cells": {}}
    for cell in cells:
        t = time.perf_counter()
        probs = torch.cat(
            [
                detector.probabilities(cell.x[i : i + 1000].float().div(255))
                for i in range(0, len(cell.x), 1000)
            ]
        )
        truth = (
            detector.classes.index(cell.corruption) if cell.corruption in detector.classes else -1
        )
        det_acc = float((probs.argmax(1) == truth).float().mean()) * 100
        keys = [(cell.key, i) for i in range(len(cell.x))]
        acc: dict[str, float] = {}
        applied: dict[str, dict[str, float]] = {}

        def score(mixes: list[Mix], cell: Cell = cell, keys: list = keys) -> float:
            p = pred.predict(keys, cell.x, mixes)
            return float((p == cell.y).float().mean()) * 100

        acc["none"] = score([Mix()] * len(keys))
        if cell.corruption in available:
            own = Mix({cell.corruption: alphas.get(cell.corruption, 1.0)})
            acc["oracle"] = score([own] * len(keys))
        rows = probs.tolist()
        for label, rule in rules.items():
            mixes = [
                rule_mix(
                    dict(zip(detector.classes, r, strict=True)),
                    rule,
                    available=available,
                    alphas=alphas,
                )
                for r in rows
            ]
            acc[label] = score(mixes)
            n = len(mixes)
            none = sum(1 for m in mixes if m.is_empty)
            own_n = sum(1 for m in mixes if cell.corruption in m)
            applied[label] = {
                "none": none / n,
                "own": own_n / n,
                "other": (n - none - own_n) / n,
            }
        out["cells"][cell.key] = {
            "corruption": cell.corruption,
            "severity": cell.severity,
            "images": len(cell.x),
            "detector": det_acc,
            "accuracy": acc,
            "applied": applied,
        }
        if log:
            log(
                f"{cell.key}: detector {det_acc:.1f} | "
                + " ".join(f"{k} {v:.1f}" for k, v in acc.items())
                + f" ({time.perf_counter() - t:.1f}s)"
            )
    out["forwards"] = pred.forwards
    return out


def summarize(result: Mapping[str, Any], labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Means per label: ``clean``, ``sev5`` (over corruptions at severity 5), ``all`` (over
    every corruption cell), ``sev<k>``; plus ``detector_*`` for the detector's accuracy."""
    cells = result["cells"].values()
    out: dict[str, dict[str, float]] = {}
    groups: dict[str, list[Mapping[str, Any]]] = {
        "clean": [c for c in cells if c["severity"] == 0],
        "all": [c for c in cells if c["severity"] > 0],
    }
    for s in sorted({c["severity"] for c in cells if c["severity"] > 0}):
        groups[f"sev{s}"] = [c for c in cells if c["severity"] == s]
    for name, group in groups.items():
        if not group:
            continue
        row: dict[str, float] = {"detector": sum(c["detector"] for c in group) / len(group)}
        for label in labels:
            vals = [c["accuracy"][label] for c in group if label in c["accuracy"]]
            if vals:
                row[label] = sum(vals) / len(vals)
        out[name] = row
    return out


def choose_rule(
    summary: Mapping[str, Mapping[str, float]],
    rules: Mapping[str, AutoRule],
    *,
    clean_tolerance: float = 0.5,
) -> str:
    """The rule with the best mean accuracy over all corrupted cells among those whose clean
    accuracy is within ``clean_tolerance`` points of the unpatched model's (if none qualifies,
    the one with the best clean accuracy)."""
    clean = summary["clean"]
    ok = [r for r in rules if clean.get(r, -1.0) >= clean["none"] - clean_tolerance]
    if not ok:
        return max(rules, key=lambda r: clean.get(r, -1.0))
    return max(
        ok, key=lambda r: (summary["all"].get(r, -1.0), summary.get("sev5", {}).get(r, -1.0))
    )


CANDIDATE_RULES: dict[str, AutoRule] = {
    r.label: r
    for r in (
        AutoRule("top1", 0.0),
        AutoRule("top1", 0.3),
        AutoRule("top1", 0.5),
        AutoRule("top1", 0.7),
        AutoRule("top1", 0.9),
        AutoRule("top1", 0.3, clean_veto=0.3),
        AutoRule("top1", 0.5, strength="probability"),
        AutoRule("weighted", 0.1, top_k=3),
        AutoRule("weighted", 0.2, top_k=2),
        AutoRule("weighted", 0.1, top_k=3, clean_veto=0.5),
    )
}
"""The rules ``rws detector eval`` compares by default."""
