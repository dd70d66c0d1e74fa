"""The weights registry: one torchvision-style enum per zoo entry, and the hub entrypoints.

Each entry of :mod:`rws_hub.zoo.entries` has a weights enum (``<ENTRY>_Weights``) whose
members hold a :class:`WeightsSpec`; ``DEFAULT`` is the recommended member. A member knows
its folder (embedded in a checkout, or on the hub), reads ``meta`` (categories, parameter
count, measured TA / RA, recipe) from the folder's ``config.json``, gives the input
``transforms()``, and loads the folder, one signature or the backbone.

- :func:`register_weights` (refuses a duplicate entrypoint name), :func:`get_weights`,
  :func:`get_weights_enum`, :func:`list_weights`;
- :func:`get_model_weights`: the weights enums of an architecture (torchvision's
  ``get_model_weights``), looked up by the architecture name the entry records;
- :func:`entrypoint`: the ``hubconf.py`` function of an enum (``hubconf.py`` has one line per
  registered enum), and :func:`signature_entrypoint`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rws_hub.archs import model_from_config
from rws_hub.core.patching import apply
from rws_hub.datasets import get_dataset
from rws_hub.errors import ArtifactError
from rws_hub.io.card import clean_accuracy, dataset_name, per_corruption
from rws_hub.io.folder import CONFIG_FILE, ModelFolder
from rws_hub.io.hub import (
    HUB_URL,
    config_from_pretrained,
    from_pretrained,
    pull,
    signature_from_pretrained,
)
from rws_hub.zoo.entries import DEFAULT_ENTRY, ENTRIES, FOLDER_ENV, ZooEntry, get_entry

#: The repository checkout this package lives in (holds ``model-store/`` in a clone).
REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "FOLDER_ENV",
    "REPO_ROOT",
    "CIFAR10_RESNET20_Weights",
    "CIFAR10_VGG16_BN_Weights",
    "CIFAR10_VGG16_Weights",
    "TINYIMAGENET32_VGG16_BN_Weights",
    "RWSWeights",
    "WeightsSpec",
    "default_weights",
    "entrypoint",
    "get_model_weights",
    "get_weights",
    "get_weights_enum",
    "list_weights",
    "register_weights",
    "signature_entrypoint",
]


@dataclass(frozen=True)
class WeightsSpec:
    """Where a zoo entry's folder lives: embedded in the repo checkout, or on the hub."""

    entry: str  # folder name of the zoo entry
    repo_id: str  # hub model repository
    architecture: str
    dataset: str
    input_size: int = 32
    env: str | None = None  # environment variable that overrides the folder

    @classmethod
    def of(cls, entry: ZooEntry) -> WeightsSpec:
        """The spec of a zoo entry (input size from its data set's spec)."""
        return cls(
            entry=entry.name,
            repo_id=entry.repo_id,
            architecture=entry.architecture,
            dataset=entry.dataset,
            input_size=get_dataset(entry.dataset).image_size,
            env=entry.env,
        )

    @property
    def embedded(self) -> Path:
        return REPO_ROOT / get_entry(self.entry).folder


def _to_rgb(image: Any) -> Any:
    """PIL images of any mode to RGB; tensors pass through."""
    convert = getattr(image, "convert", None)
    return convert("RGB") if callable(convert) and getattr(image, "mode", "RGB") != "RGB" else image


def _meta_for(config: dict[str, Any]) -> dict[str, Any]:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = model_from_config(config)
    metrics = config.get("metrics") or {}
    return {
        "categories": list(config["classes"]),
        "dataset": dataset_name(config),
        "num_params": sum(p.numel() for p in model.parameters()),
        "architecture": config["architecture"],
        "width": config.get("width", 1.0),
        "input_size": config.get("input_size", [3, 32, 32]),
        "lineage": config.get("lineage"),
        "signature_layers": config.get("signature_layers"),
        "signatures": list(config.get("signatures", [])),
        "metrics": metrics,
        "ta": clean_accuracy(metrics),
        "ra": {c: v.get("patched_ra") for c, v in per_corruption(metrics).items()},
        "recipe": config.get("recipe", {}),
    }


class RWSWeights(Enum):
    """Base of the weights enums: members hold a :class:`WeightsSpec`."""

    @property
    def spec(self) -> WeightsSpec:
        return self.value

    @property
    def entry(self) -> ZooEntry:
        """The zoo entry these weights belong to."""
        return get_entry(self.value.entry)

    @property
    def repo_id(self) -> str:
        """The hub model repository of these weights."""
        return self.value.repo_id

    @property
    def url(self) -> str:
        """Hub page of the repository (the folder's files are under ``/resolve/main/``)."""
        return f"{HUB_URL}/{self.value.repo_id}"

    def local_folder(self) -> Path | None:
        """The folder on this machine, if any: ``$RWS_HUB_FOLDER`` when set (for the entry
        that names it; an error if it is not a model folder), else the embedded
        ``model-store/<entry>/`` of the repository checkout when it holds ``config.json``."""
        spec = self.value
        if spec.env and os.environ.get(spec.env):
            path = Path(os.environ[spec.env]).expanduser()
            if not (path / CONFIG_FILE).is_file():
                raise ArtifactError(f"{spec.env}={path}: not a model folder (no {CONFIG_FILE})")
            return path
        if (spec.embedded / CONFIG_FILE).is_file():
            return spec.embedded
        return None

    def get_folder(self, *, download: bool = True) -> Path:
        """The model folder: :meth:`local_folder`, else the whole repo from the hub (cache
        first; works with ``HF_HUB_OFFLINE=1`` once cached). ``download=False`` never
        contacts the hub and raises :class:`ArtifactError` when there is no local folder."""
        local = self.local_folder()
        if local is not None:
            return local
        if not download:
            raise ArtifactError(
                f"{self.value.entry}: no folder at {self.value.embedded} (or ${FOLDER_ENV}) "
                "and download=False"
            )
        return pull(self.value.repo_id)

    def config(self) -> dict[str, Any]:
        """The folder's ``config.json`` (from the hub, only that file is downloaded)."""
        return config_from_pretrained(self._source())

    @property
    def meta(self) -> dict[str, Any]:
        """Categories, data set, parameter count, measured TA / RA (``ta``: the backbone's
        clean accuracy; ``ra``: RA per corruption with its signature; ``metrics``: everything
        measured), recipe and signature names, read from the folder's ``config.json``."""
        return _meta_for(self.config())

    def transforms(self) -> Any:
        """A torchvision transform: PIL image (any mode) -> float tensor in [0, 1], shape
        (3, S, S) with S the model's input size (its data set's image size). Resize the short
        side, center-crop, no normalisation (the model normalises inside)."""
        from torchvision.transforms import v2  # torchvision is slow to import: only when asked

        size = self.value.input_size
        return v2.Compose(
            [
                v2.Lambda(_to_rgb),
                v2.ToImage(),
                v2.Resize(size, antialias=True),
                v2.CenterCrop(size),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )

    def _source(self) -> Path | str:
        """:meth:`local_folder` when there is one, else the hub repo id."""
        local = self.local_folder()
        return local if local is not None else self.value.repo_id

    def load(self, **kwargs: Any) -> ModelFolder:
        """The loaded folder (kwargs of :func:`~rws_hub.io.hub.from_pretrained`: device,
        signatures, verify, revision, cache_dir, token). From the hub only the requested
        signatures download."""
        return from_pretrained(self._source(), **kwargs)

    def signature(self, name: str, **kwargs: Any) -> Any:
        """One verified signature (kwargs of :func:`~rws_hub.io.hub.signature_from_pretrained`)."""
        return signature_from_pretrained(self._source(), name, **kwargs)

    def build_model(self, pretrained: bool = True, **kwargs: Any) -> nn.Module:
        """The backbone (``pretrained``) or an untrained model of the same architecture."""
        if pretrained:
            return self.load(**{"signatures": None, **kwargs}).model
        return model_from_config(self.config())


# -- the registry -----------------------------------------------------------------------------

_WEIGHTS: dict[str, type[RWSWeights]] = {}


def register_weights(cls: type[RWSWeights]) -> type[RWSWeights]:
    """Class decorator: register a weights enum under its entry's entrypoint name (read from
    its ``DEFAULT`` member); a name already registered is refused with a ``ValueError``."""
    name = get_entry(cls.DEFAULT.value.entry).entrypoint
    if name in _WEIGHTS:
        raise ValueError(
            f"weights {name!r} are already registered ({_WEIGHTS[name].__qualname__}); "
            "pick another entry"
        )
    _WEIGHTS[name] = cls
    return cls


def unregister_weights(name: str) -> None:
    """Remove registered weights (for tests)."""
    _WEIGHTS.pop(name, None)


def list_weights() -> list[str]:
    """Entrypoint names of the registered weights enums, in registration order."""
    return list(_WEIGHTS)


def get_weights_enum(name: str) -> type[RWSWeights]:
    """The weights enum of a zoo entry by entrypoint or folder name."""
    if name not in _WEIGHTS and any(name == e.name for e in ENTRIES.values()):
        name = get_entry(name).entrypoint
    try:
        return _WEIGHTS[name]
    except KeyError:
        raise ValueError(f"unknown zoo entry {name!r}; known: {', '.join(_WEIGHTS)}") from None


def get_weights(name: str) -> RWSWeights:
    """The default weights of a zoo entry by entrypoint name (or folder name)."""
    return get_weights_enum(name).DEFAULT


def get_model_weights(architecture: str) -> list[type[RWSWeights]]:
    """The weights enums whose entry uses ``architecture`` (an :mod:`rws_hub.archs` name)."""
    return [w for w in _WEIGHTS.values() if w.DEFAULT.value.architecture == architecture]


def default_weights() -> RWSWeights:
    """The default weights of the default zoo entry (the embedded folder)."""
    return get_weights(DEFAULT_ENTRY.entrypoint)


# -- the entries' enums -----------------------------------------------------------------------


@register_weights
class CIFAR10_RESNET20_Weights(RWSWeights):  # noqa: N801 (torchvision naming)
    """ResNet-20 (the CIFAR ResNet, batch norm) trained on CIFAR-10, with its corruption
    signatures: the embedded default."""

    RWS_V1 = WeightsSpec.of(get_entry("cifar10-resnet20"))
    DEFAULT = RWS_V1


@register_weights
class CIFAR10_VGG16_BN_Weights(RWSWeights):  # noqa: N801 (torchvision naming)
    """VGG-16 with batch norm (32x32 variant) trained on CIFAR-10, with its corruption
    signatures."""

    RWS_V1 = WeightsSpec.of(get_entry("cifar10-vgg16-bn"))
    DEFAULT = RWS_V1


@register_weights
class CIFAR10_VGG16_Weights(RWSWeights):  # noqa: N801 (torchvision naming)
    """VGG-16 (32x32 variant) trained on CIFAR-10, with its corruption signatures."""

    RWS_V1 = WeightsSpec.of(get_entry("cifar10-vgg16"))
    DEFAULT = RWS_V1


@register_weights
class TINYIMAGENET32_VGG16_BN_Weights(RWSWeights):  # noqa: N801 (torchvision naming)
    """The CIFAR-10 VGG-16-BN's θ_pre adapted to Tiny-ImageNet-32 (100 classes), with its own
    corruption signatures and the CIFAR-10 entry's (same lineage, ``cifar10.<name>``)."""

    RWS_V1 = WeightsSpec.of(get_entry("tinyimagenet32-vgg16-bn"))
    DEFAULT = RWS_V1


# -- hubconf entrypoints ----------------------------------------------------------------------

#: ``auto(folder, device)``: the module that patches each image with its detected mix.
AutoBuilder = Callable[[ModelFolder, str], nn.Module]

_ENTRYPOINT_DOC = """{summary}.

    The model takes float images in [0, 1], shape (N, 3, {size}, {size}), and normalises inside.

    Args:
        pretrained (bool): load the clean backbone's weights; False gives an untrained model
            of the same architecture (and width).
        signatures (None | "all" | list[str]): signatures to attach as
            ``model.rws_signatures`` (``{{name: Signature}}``); from the hub only these files are
            downloaded. Names: ``{enum}.DEFAULT.meta["signatures"]``.
        patch (None | dict[str, float] | "auto"): ``{{name: alpha}}`` to apply in place right
            away (the names are loaded if not in ``signatures``). Take it off with
            ``rws_hub.remove(model)``; use ``with rws_hub.patch(model, {{...}}):`` for a
            temporary patch, ``rws_hub.apply(model, {{...}})`` for a lasting one.
            ``"auto"``: every signature and the folder's corruption detector are loaded and
            a module is returned whose forward patches each image with the mix the detector
            chooses for it (``model.last_mixes`` / ``model.last_detected`` say what it chose
            and saw after each call); the backbone's own weights are never changed.
        device (str): where the weights go.
        verify (bool): check every file against the folder's sha256 manifest.

    Returns:
        nn.Module in eval mode with ``rws_signatures``, ``rws_lineage``,
        ``rws_architecture``, ``rws_config`` (and ``rws_refused``: signature files that failed
        their checks and were skipped, ``{{file: reason}}``); for ``patch="auto"`` an
        ``rws_hub.inference.engine.MixedModel`` whose ``.model`` is that backbone.
    """


def _load_names(signatures: Any, patch: Any) -> Any:
    """The signature names to load for ``signatures`` plus the names ``patch`` uses."""
    names = signatures
    if patch:
        wanted = list(patch)
        if names is None:
            names = wanted
        elif names != "all":
            names = [names] if isinstance(names, str) else list(names)
            names += [n for n in wanted if n not in names]
    return names


def _auto_model(weights: RWSWeights, auto: AutoBuilder | None, device: str, verify: bool):
    folder = weights.load(device=device, signatures="all", verify=verify)
    if not folder.has_detector():
        raise ValueError(
            'patch="auto" needs a corruption detector, and this model folder ships none; '
            "pass patch={name: alpha} instead"
        )
    if auto is None:
        raise ValueError('patch="auto" is not available from this entrypoint')
    wrapped = auto(folder, device)
    model = folder.model
    for attr in ("rws_signatures", "rws_lineage", "rws_architecture", "rws_config"):
        setattr(wrapped, attr, getattr(model, attr))  # set by ModelFolder.load
    if not hasattr(wrapped, "rws_refused"):
        wrapped.rws_refused = dict(folder.refused)
    return wrapped


def entrypoint(weights_enum: type[RWSWeights], *, auto: AutoBuilder | None = None):
    """The ``hubconf.py`` function of a registered weights enum.

    ``auto(folder, device)`` builds the module ``patch="auto"`` returns (the inference
    engine's; ``hubconf.py`` passes it, since the zoo does not import the engine).
    """
    weights = weights_enum.DEFAULT
    entry = weights.entry

    def load(pretrained=True, signatures=None, patch=None, device="cpu", verify=True):
        if isinstance(patch, str):
            if patch.strip().lower() != "auto":
                raise ValueError(f"patch must be a dict {{name: alpha}} or 'auto', not {patch!r}")
            return _auto_model(weights, auto, device, verify)
        if not pretrained:
            if signatures or patch:
                raise ValueError(
                    "signatures and patch need pretrained=True (the backbone they fit)"
                )
            return weights.build_model(pretrained=False).to(device).eval()
        names = _load_names(signatures, patch)
        folder = weights.load(device=device, signatures=names, verify=verify)
        model = folder.model
        model.rws_refused = dict(folder.refused)
        if folder.refused:
            warnings.warn(
                "signature files refused: "
                + "; ".join(f"{f}: {r}" for f, r in folder.refused.items()),
                stacklevel=2,
            )
        if patch:
            apply(model, dict(patch))
        return model

    load.__name__ = load.__qualname__ = entry.entrypoint
    load.__doc__ = _ENTRYPOINT_DOC.format(
        summary=entry.summary,
        size=weights.value.input_size,
        enum=weights_enum.__name__,
    )
    return load


def signature_entrypoint(name, model=DEFAULT_ENTRY.entrypoint, device="cpu"):
    """One Robust Weight Signature of a zoo model, e.g. ``signature("gaussian_noise")``.

    Only that signature's file (and the folder manifest, for its sha256 check) is read or,
    from the hub, downloaded. Patch a model with it:
    ``with rws_hub.patch(model, {sig: 1.0}): ...``.

    Args:
        name (str): signature name (a corruption such as ``"fog"``).
        model (str): the zoo entry it belongs to (default: the default entry's entrypoint).
        device (str): where its tensors go.

    Returns:
        rws_hub.Signature
    """
    return get_weights(model).signature(name, device=device)
