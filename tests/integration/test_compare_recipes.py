"""benchmarks/compare_recipes.py on two synthetic evaluation records: the section it writes into
an entry's own report, its targets and the image path relative to that report."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location(
        "compare_recipes", ROOT / "benchmarks" / "compare_recipes.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_recipes"] = module
    spec.loader.exec_module(module)
    return module


def _record(patched_ta: float, patched_ra: float, robust_ra: float) -> dict:
    cs = ["fog", "contrast"]
    return {
        "images": 100,
        "backbone": {
            "clean": {"none": 90.0},
            "corrupted": {c: {"5": {"none": 50.0, "own": patched_ra}} for c in cs},
            "meta": {"own_clean": {c: patched_ta for c in cs}},
        },
        "robust_models": {c: {"clean": patched_ta + 0.5, "corrupted": robust_ra} for c in cs},
    }


def test_an_entry_report_gets_its_comparison_under_its_targets(tmp_path: Path) -> None:
    cr = _module()
    (tmp_path / "a.json").write_text(json.dumps(_record(87.0, 80.0, 82.0)))  # TA -3, 94%
    (tmp_path / "b.json").write_text(json.dumps(_record(88.5, 78.0, 80.0)))  # TA -1.5, 93%
    out, doc = (
        tmp_path / "docs" / "results" / "e",
        tmp_path / "docs" / "results" / "e" / "README.md",
    )
    doc.parent.mkdir(parents=True)
    doc.write_text("# entry\n\n## Other section\n\nkept\n")
    argv = [
        "--recipe",
        f"mix 50/50={tmp_path / 'a.json'}",
        "--recipe",
        f"mix 70/30={tmp_path / 'b.json'}",
    ]
    argv += ["--out", str(out), "--doc", str(doc), "--signatures", "int8 with K = 16"]
    assert cr.main([*argv, "--ta-within", "2", "--gain-share", "0.85"]) == 0
    text = doc.read_text()
    assert "## Other section\n\nkept" in text and "![recipes](recipe.png)" in text
    assert "signatures int8 with K = 16" in text and "within 2 points" in text
    assert "**mix 70/30**" in text  # the only recipe meeting both targets
    assert '--ta-within "2.0"' in text and (out / "recipe.png").is_file()
    # under the old, looser targets both meet both: the higher patched TA + RA wins
    assert cr.main(argv) == 0
    assert "**mix 50/50**" in doc.read_text() and doc.read_text().count("## Fine-tuning") == 1
