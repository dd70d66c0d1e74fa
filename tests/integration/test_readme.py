"""The README's measured table says what the embedded model folder's config.json says."""

from __future__ import annotations

import json
import re
from statistics import mean

import pytest
from helpers.hub import REPO_ROOT

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
