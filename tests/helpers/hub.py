"""Test helpers for the model folder and hub tests: a tiny real model folder, and a
huggingface_hub cache populated from a folder the way the hub client lays it out."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from rws_hub.archs import create_model
from rws_hub.core.layers import shallow_params
from rws_hub.core.lineage import fingerprint
from rws_hub.core.signature import Signature
from rws_hub.io.folder import save_model_folder

REPO_ROOT = Path(__file__).resolve().parents[2]
WIDTH = 0.125
K = 2
NAMES = ("gaussian_noise", "fog", "contrast")


def tiny_parts(seed: int = 0, names: tuple[str, ...] = NAMES):
    """(pretrained, clean, signatures) for a width-0.125 VGG-16: clean = pretrained + noise,
    each signature random deltas on the first K conv layers, tagged with the lineage."""
    torch.manual_seed(seed)
    pre = create_model("vgg16_cifar", width=WIDTH).eval()
    clean = create_model("vgg16_cifar", width=WIDTH).eval()
    clean.load_state_dict(pre.state_dict())
    with torch.no_grad():
        for p in clean.parameters():
            p.add_(0.01 * torch.randn_like(p))
    lineage = fingerprint(pre)
    keys = shallow_params(clean, K)
    sd = clean.state_dict()
    sigs = [
        Signature(
            name,
            {k: 0.2 * sd[k].abs().mean() * torch.randn_like(sd[k]) for k in keys},
            architecture="vgg16_cifar",
            lineage=lineage,
            layers=K,
            provenance={"test": True},
        )
        for name in names
    ]
    return pre, clean, sigs


def tiny_metrics(names: tuple[str, ...] = NAMES) -> dict:
    """Metrics in the form the zoo's export writes (numbers made up for the fixture)."""
    return {
        "dataset": "cifar10",
        "test_images": 100,
        "severity": 5,
        "clean_accuracy": 0.91,
        "corruptions": {
            n: {"backbone_ra": 0.4 + 0.01 * i, "patched_ra": 0.7 + 0.01 * i, "patched_ta": 0.88}
            for i, n in enumerate(names)
        },
    }


def make_tiny_folder(path: Path, seed: int = 0, names: tuple[str, ...] = NAMES) -> Path:
    """A complete model folder (with pretrained.safetensors) at ``path``."""
    pre, clean, sigs = tiny_parts(seed, names)
    config = {
        "architecture": "vgg16_cifar",
        "width": WIDTH,
        "signature_layers": K,
        "metrics": tiny_metrics(names),
        "recipe": {"epochs": 1, "note": "test fixture"},
    }
    return save_model_folder(path, model=clean, config=config, signatures=sigs, pretrained=pre)


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def populate_hf_cache(
    folder: Path, cache_dir: Path, repo_id: str, commit: str | None = None, tree: bool = True
) -> str:
    """Lay ``folder`` out as huggingface_hub's cache holds a downloaded model repo:
    ``models--owner--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
    refs/main, trees/<commit>.json}`` (the tree listing only with ``tree``: snapshot_download
    writes it, hf_hub_download does not). Safetensors files are LFS files (etag = sha256), the
    others regular git files (etag = git blob sha1). Returns the commit hash."""
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    commit = commit or hashlib.sha1("\n".join(files).encode()).hexdigest()
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "trees").mkdir(exist_ok=True)
    listing = {}
    for rel in files:
        data = (folder / rel).read_bytes()
        lfs = rel.endswith(".safetensors")
        etag = hashlib.sha256(data).hexdigest() if lfs else _git_blob_sha1(data)
        (repo / "blobs" / etag).write_bytes(data)
        link = repo / "snapshots" / commit / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(repo / "blobs" / etag, link.parent))
        entry = {"size": len(data), "blob_id": _git_blob_sha1(data)}
        if lfs:
            entry.update(lfs_sha256=etag, lfs_size=len(data))
        listing[rel] = entry
    (repo / "refs" / "main").write_text(commit)
    if tree:
        listing_json = json.dumps({"format_version": 1, "files": listing})
        (repo / "trees" / f"{commit}.json").write_text(listing_json)
    return commit


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (so import-time settings such as HF_HUB_OFFLINE
    and HF_ENDPOINT apply), from the repo root."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    full_env.update(env)
    full_env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full_env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
