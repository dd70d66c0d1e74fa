"""The README says what the embedded model folder says, and its Python tour runs as written."""

from __future__ import annotations

import json
import re
from statistics import mean

import pytest
import torch
from helpers.hub import REPO_ROOT

import rws_hub
from rws_hub.io.folder import ModelFolder
from rws_hub.zoo.entries import DEFAULT_ENTRY

FOLDER = REPO_ROOT / DEFAULT_ENTRY.folder


@pytest.mark.skipif(not (FOLDER / "config.json").is_file(), reason="no embedded model folder")
def test_readme_table_matches_the_model_folder() -> None:
    metrics = json.loads((FOLDER / "config.json").read_text())["metrics"]
    rows = metrics["corruptions"]
    text = (REPO_ROOT / "README.md").read_text()
    assert f"full CIFAR-10 test set ({metrics['test_images']} images)" in text
    table = {}
    for line in text.splitlines():
        m = re.match(r"\| (\*\*mean of all 19\*\*|[a-z_]+) \|((?: [\d.]+ \|){4})$", line)
        if m:
            table[m.group(1)] = [float(x) for x in m.group(2).split("|") if x.strip()]
    assert len(table) >= 2
    keys = ("backbone_ra", "patched_ra", "robust_model_ra", "patched_ta")
    for name, values in table.items():
        want = (
            [100 * mean(r[k] for r in rows.values()) for k in keys]
            if name.startswith("**")
            else [100 * rows[name][k] for k in keys]
        )
        assert values == pytest.approx(want, abs=0.051), name
    assert f"backbone: {100 * metrics['clean_accuracy']:.1f}" in text


def _python_block(heading: str) -> str:
    """The first ```python block after the README heading ``heading``."""
    text = (REPO_ROOT / "README.md").read_text()
    after = text[text.index(heading) :]
    m = re.search(r"```python\n(.*?)```", after, re.S)
    assert m, f"no python block after {heading!r}"
    return m.group(1)


@pytest.mark.skipif(not (FOLDER / "config.json").is_file(), reason="no embedded model folder")
def test_readme_python_tour_runs(tmp_path, monkeypatch) -> None:
    """The quick tour's Python block runs as written on the embedded default (in a scratch
    directory that sees ``model-store/``), its last line on θ_pre, θ_std and a robust stand-in."""
    code = _python_block("### Python: patch robustness in")
    assert DEFAULT_ENTRY.folder in code
    (tmp_path / "model-store").symlink_to(REPO_ROOT / "model-store")
    monkeypatch.chdir(tmp_path)
    pretrained = FOLDER / "pretrained.safetensors"
    clean = FOLDER / "model.safetensors"
    model = ModelFolder.load(FOLDER).model
    with rws_hub.patch(model, {"fog": 1.0}):  # θ_std + fog: a model whose change is known
        robust = {k: v.clone() for k, v in model.state_dict().items()}
    scope = {"pretrained": pretrained, "clean": clean, "robust": robust}
    exec(compile(code, "README.md (Python tour)", "exec"), scope)
    assert (tmp_path / "fog-r8.safetensors").is_file()
    assert scope["logits"].shape == (8, 10) and torch.isfinite(scope["logits"]).all()
    assert scope["sig"].name == "my_blur" and scope["sig"].nbytes > 0
