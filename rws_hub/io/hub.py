"""huggingface_hub and torchvision-style access to model folders.

- :func:`push_to_hub` / :func:`pull`: a model folder to and from a hub model repository.
- :func:`from_pretrained`: a :class:`~rws_hub.io.folder.ModelFolder` from a local folder or a hub
  repo id (only the requested signature files are downloaded).
- :func:`signature_from_pretrained`: one signature, downloading just its file and the manifest.
- :func:`config_from_pretrained`: a folder's ``config.json``, downloading just that file.

The zoo's torchvision-style weights enums, built on these, are in :mod:`rws_hub.zoo.weights`.

The model folder is the only artifact format: the hub repository *is* the folder, file for file.
Downloads go through huggingface_hub's cache, so ``HF_HUB_OFFLINE=1`` works from a populated cache.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from rws_hub.errors import ArtifactError
from rws_hub.io.folder import (
    CARD_FILE,
    CONFIG_FILE,
    DETECTOR_FILE,
    EXAMPLES_DIR,
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

# Files every download of a folder needs, whichever signatures are asked for.
_CORE_FILES = [CONFIG_FILE, MODEL_FILE, MANIFEST_FILE, CARD_FILE]


def _version() -> str:
    try:
        return version("rws-hub")
    except PackageNotFoundError:  # not installed (plain checkout on sys.path)
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
        patterns = [*_CORE_FILES, DETECTOR_FILE, f"{EXAMPLES_DIR}/*.png"]
        patterns += [PRETRAINED_FILE] if pretrained else []
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
    resolve = _reference_resolver(cache_dir=cache_dir, token=token)
    return ModelFolder.load(
        path, device=device, signatures=signatures, verify=verify, resolve=resolve
    )


def _reference_resolver(
    *, cache_dir: str | Path | None, token: str | None
) -> Callable[[Mapping[str, Any]], Path | None]:
    """For :meth:`ModelFolder.load`: a referenced signature set that is not next to the folder
    (a hub snapshot has no siblings) comes from its ``repo_id`` (signatures, config and
    manifest; no backbone weights needed, but the core files come along)."""

    def resolve(ref: Mapping[str, Any]) -> Path | None:
        repo = ref.get("repo_id")
        if not isinstance(repo, str):
            return None
        try:
            return pull(repo, cache_dir=cache_dir, pretrained=False, token=token)
        except Exception as exc:  # noqa: BLE001 - any hub failure: the set is refused, says why
            raise ArtifactError(f"hub repo {repo}: {type(exc).__name__}: {exc}") from exc

    return resolve


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


def config_from_pretrained(
    repo_id_or_path: str | Path,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """A model folder's ``config.json`` from a local folder or a hub repo (only that file is
    downloaded; not checked against the manifest, as it is only read, never run)."""
    if _is_local(repo_id_or_path):
        return ModelFolder.read_config(Path(repo_id_or_path).expanduser())
    path = hf_hub_download(
        str(repo_id_or_path),
        CONFIG_FILE,
        repo_type="model",
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        library_name=LIBRARY_NAME,
        library_version=_version(),
    )
    return ModelFolder.read_config(Path(path).parent)
