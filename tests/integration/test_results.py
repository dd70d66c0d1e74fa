"""benchmarks/results.py end to end on a tiny zoo: every section, its JSON, PNG and the report."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("matplotlib")

from helpers.zoo import tiny_spec  # noqa: E402

from rws_hub.core.layers import shallow_params  # noqa: E402
from rws_hub.core.patching import patch  # noqa: E402
from rws_hub.zoo.evaluation import accuracy  # noqa: E402
from rws_hub.zoo.pipeline import ZooBuilder  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CORRUPTIONS = ["gaussian_noise", "fog", "contrast"]  # in ALL_CORRUPTIONS order
KEYS = ("main", "layers", "cosine", "alpha", "depth", "compose", "quant", "transfer")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_results() -> ModuleType:
    spec = importlib.util.spec_from_file_location("results", ROOT / "benchmarks" / "results.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["results"] = module
    spec.loader.exec_module(module)
    return module


R = _load_results()


@pytest.fixture(scope="module")
def zoo(tiny_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny zoo (3 corruptions, width 1/8) built and exported with rws_hub.zoo.pipeline."""
    root = tmp_path_factory.mktemp("results_zoo")
    spec = tiny_spec(root, tiny_cifar, architecture="vgg16_cifar", corruptions=CORRUPTIONS)
    ZooBuilder(spec, progress=False).run()
    return {"work": root / "work", "folder": root / "folder", "root": root}


def _args(zoo: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--work",
        str(zoo["work"]),
        "--folder",
        str(zoo["folder"]),
        "--out",
        str(out / "results"),
        "--doc",
        str(out / "results.md"),
        "--limit",
        "64",
        "--sweep",
        ",".join(CORRUPTIONS),
        "--transfer-epochs",
        "0.5",
        "--threads",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def report(zoo: dict[str, Path]) -> Path:
    """Every section run once with ``all``; a foreign section is in the report beforehand."""
    out = zoo["root"] / "docs"
    out.mkdir()
    (out / "results.md").write_text(
        "# old\n\n## 1. Main table: standard, robust and patched models\n\nstale\n\n"
        "<!-- auto-patch -->\n## Auto-patch: detecting the corruption\n\nDetector text 42.\n"
        "<!-- /auto-patch -->\n\n## Notes by someone else\n\nkeep me\n"
    )
    assert R.main(["all", *_args(zoo, out)]) == 0
    return out


def _json(report: Path, key: str) -> dict:
    return json.loads((report / "results" / f"{key}.json").read_text())


def test_fast_accuracy_equals_rws_accuracy(zoo: dict[str, Path], tmp_path: Path) -> None:
    args = R.build_parser().parse_args(["main", *_args(zoo, tmp_path)])
    z = R.Zoo(args)
    assert z.corruptions == CORRUPTIONS and z.sweep == CORRUPTIONS
    model = z.backbone
    assert z.acc(model) == accuracy(model, z.test)
    for c in ("fog", "gaussian_noise"):
        assert z.acc(model, c) == accuracy(model, z.test, corruption=c, severity=5)
        with patch(model, {z.signature(c): 1.0}):
            assert z.acc(model, c) == accuracy(model, z.test, corruption=c, severity=5)


def test_every_section_writes_json_and_png(report: Path) -> None:
    for key in KEYS:
        data = _json(report, key)
        assert data["setup"]["test_images"] == 64
        assert data["command"].startswith("nice -n 10 .venv/bin/python benchmarks/results.py")
        png = (report / "results" / f"{key}.png").read_bytes()
        assert png[:8] == PNG_MAGIC and len(png) > 5000


def test_main_table_is_the_zoo_evaluation(report: Path, zoo: dict[str, Path]) -> None:
    ev = json.loads((zoo["work"] / "eval.json").read_text())
    r = _json(report, "main")
    assert [row["corruption"] for row in r["rows"]] == CORRUPTIONS
    for row in r["rows"]:
        c = row["corruption"]
        assert row["std_ra"] == ev["backbone"]["corrupted"][c]["5"]["none"]
        assert row["patched_ra"] == ev["backbone"]["corrupted"][c]["5"]["own"]
        assert row["robust_ra"] == ev["robust_models"][c]["corrupted"]
        # int8 per channel: about one byte per value plus scales
        assert (
            row["signature_fp32_bytes"] / 4
            <= row["signature_bytes"]
            < row["signature_fp32_bytes"] / 3
        )
    assert r["full_model_bytes"] > r["signature_bytes_mean"]


def test_layers_relative_difference(report: Path, zoo: dict[str, Path]) -> None:
    r = _json(report, "layers")
    assert r["layers"] == [f"conv{i}" for i in range(1, 14)] + ["fc"]
    std = load_file(str(zoo["work"] / "clean/final.safetensors"))
    fog = load_file(str(zoo["work"] / "robust/fog/final.safetensors"))
    names = ["features.0.weight", "features.0.bias"]
    num = sum(float((fog[n].double() - std[n].double()).pow(2).sum()) for n in names)
    den = sum(float(std[n].double().pow(2).sum()) for n in names)
    assert math.isclose(r["relative_difference"]["fog"][0], math.sqrt(num / den), rel_tol=1e-9)
    assert all(v > 0 for v in r["mean"])


def test_cosine_matrix(report: Path) -> None:
    m = torch.tensor(_json(report, "cosine")["matrix"])
    assert m.shape == (3, 3)
    assert torch.allclose(m.diagonal(), torch.ones(3), atol=1e-6)
    assert torch.allclose(m, m.T, atol=1e-9)
    assert _json(report, "cosine")["signature_vs_clean_direction_max_abs"] < 0.05


def test_alpha_sweep_and_exact_removal(report: Path) -> None:
    r = _json(report, "alpha")
    assert r["alphas"] == [0, 0.25, 0.5, 1, 1.5, 2]
    assert r["bitwise_restore"] is True and r["bitwise_restore_checks"] == 3 * (6 + 1)
    for c in CORRUPTIONS:
        assert len(r["ra"][c]) == 6
        assert r["ra"][c][0] == r["base_ra"][c]
        assert r["ta"][c][0] == r["base_ta"]


def test_bitwise_check_detects_a_change(zoo: dict[str, Path], tmp_path: Path) -> None:
    z = R.Zoo(R.build_parser().parse_args(["main", *_args(zoo, tmp_path)]))
    snap = R._snapshot(z.backbone)
    assert R._bitwise_equal(z.backbone, snap)
    with torch.no_grad():
        w = z.backbone.features[0].weight
        w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))
    assert not R._bitwise_equal(z.backbone, snap)


def test_depth_sweep(report: Path, zoo: dict[str, Path]) -> None:
    r = _json(report, "depth")
    assert r["ks"] == list(range(1, 14))
    std = load_file(str(zoo["work"] / "clean/final.safetensors"))
    for k in (1, 7, 13):
        assert r["fp32_bytes"][k - 1] == 4 * sum(std[n].numel() for n in shallow_params(std, k))
    assert r["fp32_bytes"] == sorted(r["fp32_bytes"])
    assert all(len(r["gain"][c]) == 13 for c in CORRUPTIONS)


def test_compose(report: Path) -> None:
    r = _json(report, "compose")
    assert len(r["pairs"]) == 3
    al = r["all_standard"]
    assert al["n"] == 3 and set(al["rules"]) == {"α = 1", "α = 1/√n", "α = 1/n"}
    assert math.isclose(al["rules"]["α = 1/√n"]["alpha"], 1 / math.sqrt(3))
    assert al["best"] == max(al["rules"], key=lambda k: al["rules"][k]["score"])
    for p in r["pairs"]:
        assert p["on_a"]["a"] == r["own_ra"][p["a"]] and p["on_b"]["b"] == r["own_ra"][p["b"]]


def test_quant_sizes(report: Path) -> None:
    s = _json(report, "quant")["schemes"]
    ratios = [s[k]["ratio"] for k in ("fp32", "fp16", "int8 linear/tensor", "int4 linear/tensor")]
    assert ratios == sorted(ratios)
    assert math.isclose(s["fp16"]["bytes"] * 2, s["fp32"]["bytes"])
    assert s["int8 linear/channel"]["bytes"] > s["int8 linear/tensor"]["bytes"]  # scales
    assert s["fp32"]["cos_to_fp32"] == pytest.approx(1.0)
    assert s["int8 linear/tensor"]["cos_to_fp32"] > s["int4 linear/tensor"]["cos_to_fp32"]


def test_transfer(report: Path) -> None:
    r = _json(report, "transfer")
    assert r["drift"]["all"] > 0
    assert list(r["rows"]) == CORRUPTIONS
    for v in r["rows"].values():
        assert 0 <= v["updated_patched"] <= 100


def test_report_has_every_section_and_keeps_foreign_text(report: Path) -> None:
    text = (report / "results.md").read_text()
    for key, title in R.SECTIONS.items():
        assert text.count(f"## {title}") == 1
        if key not in ("bnstats", "datasets"):
            assert f"![{title}](results/" in text
    # `all` skips the batch-norm section on a network without batch norm, and says why
    assert not (report / "results" / "bnstats.json").exists()
    assert "Does not apply: vgg16_cifar has no batch norm." in text
    assert "stale" not in text
    # section 8b needs a second entry on another data set: the only one not run
    not_run = text.split("## Not yet run")[1].split("\n## ")[0]
    assert "benchmarks/results.py datasets" in not_run and "results.py main" not in not_run
    assert text.count("Detector text 42.") == 1 and "<!-- auto-patch -->" in text
    assert "## Notes by someone else\n\nkeep me" in text
    assert text.count("**Difference and why.**") == 8
    assert re.search(r"\{[a-z_]+(:[^}]*)?\}", text) is None  # every placeholder filled


def test_report_lists_sections_not_run_and_prefers_side_file(report: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    for key in ("main", "cosine"):
        (out / f"{key}.json").write_text((report / "results" / f"{key}.json").read_text())
    (out / "auto_patch.md").write_text("## Auto-patch: detecting the corruption\n\nNewer text.\n")
    doc = tmp_path / "results.md"
    doc.write_text((report / "results.md").read_text())
    assert R.main(["doc", "--out", str(out), "--doc", str(doc)]) == 0
    text = doc.read_text()
    assert "## Not yet run" in text
    for key in ("layers", "alpha", "depth", "compose", "quant", "transfer"):
        assert f"benchmarks/results.py {key}`" in text
    assert "Newer text." in text and "Detector text 42." not in text
    assert text.count("## Auto-patch") == 1
    # regenerating twice gives the same page
    R.main(["doc", "--out", str(out), "--doc", str(doc)])
    assert doc.read_text() == text


@pytest.fixture(scope="module")
def bn_zoo(tiny_cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny VGG-16-BN zoo (2 corruptions, K = 3 units)."""
    root = tmp_path_factory.mktemp("results_bn_zoo")
    spec = tiny_spec(
        root,
        tiny_cifar,
        name="tiny-bn",
        architecture="vgg16_bn_cifar",
        corruptions=["fog", "contrast"],
        layers=3,
    )
    ZooBuilder(spec, progress=False).run()
    return {"work": root / "work", "folder": root / "folder", "root": root}


def test_batch_norm_entry_sections(bn_zoo: dict[str, Path], report: Path, tmp_path: Path) -> None:
    """On a batch-norm zoo: units in the layer and depth sections, the four treatments of the
    statistics, and the entry summarized in the main report under "Other zoo entries"."""
    out = tmp_path / "results"
    out.mkdir()
    (out / "main.json").write_text((report / "results" / "main.json").read_text())
    entry = out / "tiny-bn"
    args = ["--work", str(bn_zoo["work"]), "--folder", str(bn_zoo["folder"]), "--out", str(entry)]
    args += ["--doc", str(entry / "README.md"), "--limit", "64", "--sweep", "fog,contrast"]
    assert R.main(["main", "layers", "depth", "bnstats", *args, "--threads", "1"]) == 0
    r = json.loads((entry / "bnstats.json").read_text())
    assert r["setup"]["batch_norm"] is True
    assert list(r["summary"]) == list(R.BN_TREATMENTS)
    z = R.Zoo(R.build_parser().parse_args(["main", *args]))
    model = z.backbone
    for label, how in R.BN_TREATMENTS.items():
        sig = z.fp32_signature("fog", **how)
        has_stats = any(n.endswith("running_var") for n in sig.tensors)
        has_affine = any(n.startswith("features.1.") for n in sig.tensors)
        assert has_stats == (how["bn"] == "stats") and has_affine == (how["bn"] != "none")
        with patch(model, {sig: 1.0}):
            assert z.acc(model, "fog") == r["ra"][label]["fog"]
    summary = r["summary"]["+ robust statistics swapped in"]
    assert summary["mean_ra"] == pytest.approx(
        sum(r["ra"]["+ robust statistics swapped in"].values()) / 2
    )
    depth = json.loads((entry / "depth.json").read_text())
    assert depth["ks"] == list(range(1, 14))  # 13 units, one per conv
    layers = json.loads((entry / "layers.json").read_text())
    assert layers["layers"][:2] == ["conv1", "conv2"]
    # the main report lists the entry, with its main table and the comparison
    text = R.write_doc(out, tmp_path / "results.md")
    assert text.count("## Other zoo entries") == 1
    assert "### `tiny-bn` ([full report](results/tiny-bn/README.md))" in text
    assert "+ robust statistics swapped in" in text
    assert R.write_doc(out, tmp_path / "results.md") == text


def test_across_data_sets(bn_zoo: dict[str, Path], tmp_path: Path) -> None:
    """Section 8b on a second tiny entry fine-tuned from the batch-norm zoo's θ_pre on a
    100-class data set: every number is the real measurement, and a foreign lineage is refused."""
    import numpy as np

    data = tmp_path / "tin-data"
    data.mkdir()
    for name, n, seed in (("train.npz", 300, 0), ("val.npz", 80, 1)):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 100, n)
        x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
        np.savez(data / name, x=x, y=y.astype(np.int64))
    spec = tiny_spec(
        tmp_path,
        data,
        name="tiny-tin",
        architecture="vgg16_bn_cifar",
        dataset="tinyimagenet32",
        work=str(tmp_path / "tin"),
        export=str(tmp_path / "tin-folder"),
        pretrained=str(bn_zoo["work"] / "pretrain/final.safetensors"),
        head_epochs=0.5,
        corruptions=["fog", "contrast"],
        layers=3,
        eval_limit=80,
    )
    ZooBuilder(spec, progress=False).run()
    out = tmp_path / "docs"
    args = ["--work", str(bn_zoo["work"]), "--folder", str(bn_zoo["folder"])]
    args += ["--out", str(out / "results"), "--doc", str(out / "results.md"), "--limit", "64"]
    args += ["--other-work", spec.work, "--other-folder", spec.export, "--threads", "1"]
    assert R.main(["datasets", *args]) == 0
    r = json.loads((out / "results" / "datasets.json").read_text())
    assert r["other"] == {"zoo": "tiny-tin", "dataset": "tinyimagenet32", "test_images": 80}
    z = R.Zoo(R.build_parser().parse_args(["main", *args]))
    o = R.Zoo(R.build_parser().parse_args(["main", "--work", spec.work, "--folder", spec.export]))
    model = o.backbone
    with patch(model, {z.signature("fog"): 1.0}):
        assert o.acc(model, "fog") == r["rows"]["fog"]["transferred"]
    cos = r["cosine"]["matrix"]
    assert cos[0][0] == pytest.approx(R.conv_cosine(z.signature("fog"), o.signature("fog")))
    assert len(cos) == 2 and min(map(min, cos)) >= -1 and max(map(max, cos)) <= 1
    text = (out / "results.md").read_text()
    assert "## 8b. Transferable across data sets" in text and "transferred" in text
    assert r["source"] == "measured here"  # θ_pre of a training run: no set to evaluate
    # adopted from the published folder: the entry's own evaluation measures the transferred
    # signatures, and the section reads the table from it instead of measuring again
    adopted = dataclasses.replace(spec, pretrained=str(bn_zoo["folder"] / "pretrained.safetensors"))
    ZooBuilder(adopted, progress=False).run(("evaluate",))
    ev = json.loads((Path(spec.work) / "eval.json").read_text())
    assert R.main(["datasets", *args]) == 0
    r2 = json.loads((out / "results" / "datasets.json").read_text())
    assert r2["source"] == "eval.json" and r2["other"]["test_images"] == 80
    for c in ("fog", "contrast"):
        assert r2["rows"][c]["transferred"] == ev["transferred"]["corruptions"][c]["ra"]
        assert r2["rows"][c]["robust"] == ev["robust_models"][c]["corrupted"]
    assert r2["cosine"] == r["cosine"]
    # both work folders gone (a fresh clone): the exported folders' signatures, backbones and
    # recorded evaluation give the same section
    ZooBuilder(adopted, progress=False).run(("export",))
    gone = ["--work", str(tmp_path / "gone"), "--other-work", str(tmp_path / "gone-too")]
    kept = ["--folder", str(bn_zoo["folder"]), "--other-folder", spec.export]
    rest = ["--out", str(out / "shipped"), "--doc", str(out / "shipped.md"), "--threads", "1"]
    assert R.main(["datasets", *gone, *kept, *rest]) == 0
    r3 = json.loads((out / "shipped" / "datasets.json").read_text())
    assert r3["source"] == "eval.json"
    assert r3["rows"] == r2["rows"] and r3["cosine"] == r2["cosine"]
    assert R.main(["main", *gone[:2], *kept[:2], *rest]) == 0  # section 1 reads eval.json
    with pytest.raises(SystemExit, match="needs the entry's checkpoints"):
        R.main(["layers", *gone[:2], *kept[:2], *rest])  # the robust models are gone
    # another lineage: refused
    foreign = tmp_path / "foreign-work"
    (foreign / "signatures").mkdir(parents=True)
    from rws_hub.core.signature import Signature

    for c in ("fog", "contrast"):
        sig = Signature.load(Path(spec.work) / "signatures" / f"{c}.safetensors")
        sig.replace(lineage="sha256:0000000000000000").save(
            foreign / "signatures" / f"{c}.safetensors"
        )
        (foreign / "robust" / c).mkdir(parents=True)
        (foreign / "robust" / c / "final.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit, match="lineage"):
        R.main(
            ["datasets", *args[:-6], "--other-work", str(foreign), "--other-folder", spec.export]
        )


def test_a_section_of_an_earlier_build_says_so() -> None:
    """A section measured on another build of the entry (another recipe) than its main table
    carries a note naming what differed; the K sweep does not count the entry's K."""
    now = {"zoo": "e", "pretrain_epochs": 40, "corrupt_fraction": 0.3, "layers": 16}
    assert R.earlier_build(now, dict(now)) == ""
    assert R.earlier_build(now, {**now, "zoo": "other", "pretrain_epochs": 8}) == ""
    old = {**now, "pretrain_epochs": 20, "layers": 7, "measured_at": "2026-12-01 21:38 UTC"}
    note = R.earlier_build(now, old, "bnstats")
    assert "pretrain epochs 20 (now 40)" in note and "layers 7 (now 16)" in note
    assert "2026-12-01 21:38 UTC" in note
    assert "layers" not in R.earlier_build(now, old, "depth")
    assert R.earlier_build(now, {**now, "layers": 7}, "depth") == ""
