"""huggingface_hub and torchvision-style access to model folders.

- :func:`push_to_hub` / :func:`pull`: a model folder to and from a hub model repository.
- :func:`from_pretrained`: a :class:`~rws_hub.io.folder.ModelFolder` from a local folder or a hub
  repo id (only the requested signature files are downloaded).
- :func:`signature_from_pretrained`: one signature, downloading just its file and the manifest.
- :class:`CIFAR10_VGG16_Weights`: a torchvision-style weights enum with ``meta`` (read from the
  folder's measured metrics), ``transforms()``, ``url`` and ``get_folder()``.

The model folder is the only artifact format: the hub repository *is* the folder, file for file.
Downloads go through huggingface_hub's cache, so ``HF_HUB_OFFLINE=1`` works from a populated cache.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError
from torch import nn

from rws_hub.archs.models import model_from_config
from rws_hub.errors import ArtifactError
from rws_hub.io.card import clean_accuracy, per_corruption
from rws_hub.io.folder import (
    CARD_FILE,
    CONFIG_FILE,
    DETECTOR_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PRETRAINED_FILE,
    SIGNATURE_DIR,
    SIGNATURE_SUFFIX,
    ModelFolder,
    read_manifest,
    read_signature_file,
    signature_file,
    verify_folder,
)

LIBRARY_NAME = "rws-hub"
HUB_URL = "https://huggingface.co"
#: Environment variable: a model folder that replaces the ``cifar10-vgg16`` zoo entry's folder.
FOLDER_ENV = "RWS_HUB_FOLDER"
#: The repository checkout this package lives in (holds ``model-store/`` in a clone).
REPO_ROOT = Path(__file__).resolve().parents[2]

# Files every download of a folder needs, whichever signatures are asked for.
_CORE_FILES = [CONFIG_FILE, MODEL_FILE, MANIFEST_FILE, CARD_FILE]


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("rws-hub")
    except Exception:  # not installed (plain checkout on sys.path)
        return "0"


def _api(token: str | None = None, endpoint: str | None = None) -> HfApi:
    return HfApi(
        endpoint=endpoint, token=token, library_name=LIBRARY_NAME, library_version=_version()
    )


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a model folder to the hub model repo ``repo_id``; returns the commit URL.

    The folder is verified first (a damaged folder is refused with :class:`ArtifactError`
    before any network call). Exactly the files in ``manifest.json`` plus the manifest are
    uploaded; remote signature files that the new manifest does not list are deleted in the
    same commit, so the repository stays one consistent folder. The repo is created if needed
    (``private`` applies then). ``endpoint`` overrides ``$HF_ENDPOINT`` (a hub mirror).
    """
    root = Path(folder)
    files = upload_files(root)
    api = _api(token, endpoint)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=root,
        repo_type="model",
        revision=revision,
        allow_patterns=files,
        delete_patterns=["signatures/*.safetensors"],
        commit_message=commit_message or f"Upload model folder ({len(files)} files) with rws-hub",
    )
    return str(getattr(info, "commit_url", info))


def upload_files(folder: str | Path) -> list[str]:
    """The files a push uploads (manifest entries and the manifest), after verifying them all.

    Raises :class:`ArtifactError` listing every problem :func:`verify_folder` finds.
    """
    root = Path(folder)
    problems = verify_folder(root)
    if problems:
        detail = "; ".join(f"{f}: {p}" for f, p in sorted(problems.items()))
        raise ArtifactError(f"refusing to push {root}: {detail}")
    return sorted(read_manifest(root)) + [MANIFEST_FILE]


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    signatures: None | str | Iterable[str] = "all",
    pretrained: bool = True,
    token: str | None = None,
) -> Path:
    """Download a model folder from the hub (``snapshot_download``) and return its local path.

    ``signatures`` limits which ``signatures/*.safetensors`` are fetched (``"all"``, ``None``, a
    name or a list); ``pretrained=False`` skips ``pretrained.safetensors`` (theta_pre, as large
    as the backbone and not needed for inference). With ``HF_HUB_OFFLINE=1`` the folder comes from the huggingface_hub cache
    (``cache_dir``, default ``$HF_HOME/hub``) without any network call. With ``local_dir`` the
    files are downloaded there (huggingface_hub's local-dir mode); when the hub cannot be reached
    the cached snapshot is copied there instead.
    """
    patterns: list[str] | None
    if signatures == "all" and pretrained:
        patterns = None  # everything
    else:
        patterns = [*_CORE_FILES, DETECTOR_FILE] + ([PRETRAINED_FILE] if pretrained else [])
        if signatures == "all":
            patterns.append(f"{SIGNATURE_DIR}/*{SIGNATURE_SUFFIX}")
        elif signatures is not None:
            names = [signatures] if isinstance(signatures, str) else list(signatures)
            patterns += [signature_file(n) for n in names]
    kw: dict[str, Any] = {
        "repo_type": "model",
        "revision": revision,
        "cache_dir": cache_dir,
        "allow_patterns": patterns,
        "library_name": LIBRARY_NAME,
        "library_version": _version(),
        "token": token,
    }
    if local_dir is None:
        return Path(snapshot_download(repo_id, **kw))
    try:
        return Path(snapshot_download(repo_id, local_dir=local_dir, **kw))
    except LocalEntryNotFoundError:
        # Hub unreachable (e.g. HF_HUB_OFFLINE=1): copy the cached snapshot, if there is one.
        cached = Path(snapshot_download(repo_id, **kw))
        shutil.copytree(cached, local_dir, dirs_exist_ok=True)
        return Path(local_dir)


def _is_local(repo_id_or_path: str | Path) -> bool:
    return Path(repo_id_or_path).expanduser().is_dir()


def from_pretrained(
    repo_id_or_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    signatures: None | str | Iterable[str] = "all",
    verify: bool = True,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    pretrained: bool = False,
) -> ModelFolder:
    """Load a model folder from a local path or a hub repo id (see :func:`pull`).

    For a hub id only the requested signatures are downloaded, and ``pretrained.safetensors``
    only with ``pretrained=True`` (for :meth:`ModelFolder.pretrained_state`). Integrity rules are those of
    :meth:`ModelFolder.load` (a refused signature is in ``.refused``, the rest load).
    """
    if _is_local(repo_id_or_path):
        path = Path(repo_id_or_path).expanduser()
    else:
        path = pull(
            str(repo_id_or_path),
            revision=revision,
            cache_dir=cache_dir,
            signatures=signatures,
            pretrained=pretrained,
            token=token,
        )
    return ModelFolder.load(path, device=device, signatures=signatures, verify=verify)


def signature_from_pretrained(
    repo_id_or_path: str | Path,
    name: str,
    *,
    device: str | torch.device = "cpu",
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> Any:
    """One :class:`~rws_hub.core.signature.Signature` from a local folder or a hub repo.

    From the hub only ``manifest.json`` and ``signatures/<name>.safetensors`` are downloaded
    (``hf_hub_download``); the file's sha256 and size are checked against the manifest, and a
    mismatch raises :class:`ArtifactError` naming the file.
    """
    rel = signature_file(name)
    if _is_local(repo_id_or_path):
        root = Path(repo_id_or_path).expanduser()
        return read_signature_file(root / rel, name, read_manifest(root), device=device)
    kw: dict[str, Any] = {
        "repo_id": str(repo_id_or_path),
        "repo_type": "model",
        "revision": revision,
        "cache_dir": cache_dir,
        "token": token,
        "library_name": LIBRARY_NAME,
        "library_version": _version(),
    }
    manifest_path = Path(hf_hub_download(filename=MANIFEST_FILE, **kw))
    manifest = read_manifest(manifest_path)
    if rel not in manifest:
        known = sorted(f for f in manifest if f.startswith("signatures/"))
        raise ArtifactError(f"{rel}: not in {repo_id_or_path}; available: {', '.join(known)}")
    # Take the file from the manifest's commit (snapshots/<commit>/manifest.json), so a push
    # landing between the two downloads cannot pair a manifest with another version's file.
    commit = manifest_path.parent.name
    if re.fullmatch(r"[0-9a-f]{40}", commit):
        kw["revision"] = commit
    path = hf_hub_download(filename=rel, **kw)
    return read_signature_file(path, name, manifest, device=device)


# -- torchvision-style weights ----------------------------------------------------------------


@dataclass(frozen=True)
class WeightsSpec:
    """Where a zoo entry's folder lives: embedded in the repo checkout, or on the hub."""

    entry: str  # e.g. "cifar10-vgg16"
    repo_id: str  # hub model repository
    architecture: str
    dataset: str
    input_size: int = 32
    env: str | None = None  # environment variable that overrides the folder

    @property
    def embedded(self) -> Path:
        return REPO_ROOT / "model-store" / self.entry


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
    def repo_id(self) -> str:
        """The hub model repository of these weights."""
        return self.value.repo_id

    @property
    def url(self) -> str:
        """Hub page of the repository (the folder's files are under ``/resolve/main/``)."""
        return f"{HUB_URL}/{self.value.repo_id}"

    def local_folder(self) -> Path | None:
        """The folder on this machine, if any: ``$RWS_HUB_FOLDER`` when set (for the
        ``cifar10-vgg16`` entry; an error if it is not a model folder), else the embedded
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
        local = self.local_folder()
        if local is None:
            local = Path(
                hf_hub_download(self.value.repo_id, CONFIG_FILE, library_name=LIBRARY_NAME)
            ).parent
        return ModelFolder.read_config(local)

    @property
    def meta(self) -> dict[str, Any]:
        """Categories, parameter count, measured TA / RA (``ta``: the backbone's clean
        accuracy; ``ra``: RA per corruption with its signature; ``metrics``: everything
        measured), recipe and signature names, read from the folder's ``config.json``."""
        return _meta_for(self.config())

    def transforms(self) -> Any:
        """A torchvision transform: PIL image (any mode) -> float tensor in [0, 1], shape
        (3, S, S) with S the model's input size (32). Resize the short side, center-crop, no
        normalisation (the model normalises inside)."""
        from torchvision.transforms import v2

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
        """The loaded folder (kwargs of :func:`from_pretrained`: device, signatures, verify,
        revision, cache_dir, token). From the hub only the requested signatures download."""
        return from_pretrained(self._source(), **kwargs)

    def signature(self, name: str, **kwargs: Any) -> Any:
        """One verified signature (kwargs of :func:`signature_from_pretrained`)."""
        return signature_from_pretrained(self._source(), name, **kwargs)

    def build_model(self, pretrained: bool = True, **kwargs: Any) -> nn.Module:
        """The backbone (``pretrained``) or an untrained model of the same architecture."""
        if pretrained:
            return self.load(**{"signatures": None, **kwargs}).model
        return model_from_config(self.config())


class CIFAR10_VGG16_Weights(RWSWeights):  # noqa: N801 (torchvision naming)
    """VGG-16 (CIFAR variant) trained on CIFAR-10, with its corruption signatures."""

    RWS_V1 = WeightsSpec(
        entry="cifar10-vgg16",
        repo_id="rws-hub/cifar10-vgg16",
        architecture="vgg16_cifar",
        dataset="cifar10",
        env=FOLDER_ENV,
    )
    DEFAULT = RWS_V1


#: Zoo entries by hubconf entrypoint name.
ZOO: dict[str, RWSWeights] = {"cifar10_vgg16": CIFAR10_VGG16_Weights.DEFAULT}


def get_weights(name: str) -> RWSWeights:
    """The weights of a zoo entry by entrypoint name (``"cifar10_vgg16"``)."""
    try:
        return ZOO[name]
    except KeyError:
        raise ValueError(f"unknown zoo entry {name!r}; known: {', '.join(ZOO)}") from None
