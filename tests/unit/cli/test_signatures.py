"""rws extract / quantize / info / patch, run in-process through the real CLI entry point."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from rws_hub import Signature, extract
from rws_hub.archs import create_model
from rws_hub.cli import main
from rws_hub.io.files import load_state_dict, save_state_dict


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    pre = create_model("vgg16_cifar", width=0.125).state_dict()
    g = torch.Generator().manual_seed(1)
    paths = {"pre": d / "pre.safetensors"}
    save_state_dict(pre, paths["pre"])
    for name, s in (("clean", 0.01), ("robust", 0.02)):
        sd = {
            k: v + s * torch.randn(v.shape, generator=g)
            if k.startswith(("features", "classifier"))
            else v
            for k, v in pre.items()
        }
        paths[name] = d / f"{name}.safetensors"
        save_state_dict(sd, paths[name])
    return paths


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_extract_matches_library(files, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fog.safetensors"
    code, text, _ = run(capsys, "extract", "--pretrained", files["pre"], "--clean", files["clean"],
                        "--robust", files["robust"], "--name", "fog", "--layers", "3",
                        "--architecture", "vgg16_cifar", "-o", out)  # fmt: skip
    assert code == 0 and "wrote" in text and "fog" in text
    sig = Signature.load(out)
    ref = extract(files["pre"], files["clean"], files["robust"], name="fog", layers=3)
    assert sig.names == ref.names and len(sig.names) == 6
    assert all(torch.equal(sig.tensors[n], ref.tensors[n]) for n in ref.names)
    assert sig.architecture == "vgg16_cifar" and sig.layers == 3 and sig.lineage == ref.lineage


def test_extract_quantized_and_bad_name(files, tmp_path: Path, capsys) -> None:
    out = tmp_path / "fog4.safetensors"
    code, _, _ = run(capsys, "extract", "--pretrained", files["pre"], "--clean", files["clean"],
                     "--robust", files["robust"], "--name", "fog", "--quantize", "int4",
                     "--granularity", "channel", "-o", out)  # fmt: skip
    assert code == 0
    assert Signature.load(out).quantization == {
        "bits": 4,
        "scheme": "linear",
        "granularity": "channel",
    }
    code, _, err = run(capsys, "extract", "--pretrained", files["pre"], "--clean", files["clean"],
                       "--robust", files["robust"], "--name", "Fog Noise", "-o", out)  # fmt: skip
    assert code == 2 and "lower-case identifier" in err


def test_quantize_info_patch(files, tmp_path: Path, capsys) -> None:
    fp32 = tmp_path / "fog.safetensors"
    extract(
        files["pre"], files["clean"], files["robust"], name="fog", architecture="vgg16_cifar"
    ).save(fp32)
    q8 = tmp_path / "fog8.safetensors"
    code, text, _ = run(
        capsys,
        "quantize",
        fp32,
        "-o",
        q8,
        "--bits",
        "8",
        "--scheme",
        "log",
        "--granularity",
        "channel",
    )
    assert code == 0 and "smaller" in text
    sig8 = Signature.load(q8)
    assert sig8.quantization == {"bits": 8, "scheme": "log", "granularity": "channel"}

    code, text, _ = run(capsys, "info", q8, "--model", files["clean"])
    assert code == 0
    for needle in ("signature     fog", "vgg16_cifar", "int8 log, per channel", "features.0.weight",
                   "8x3x3x3", "int8/ch", "smaller", "full model"):  # fmt: skip
        assert needle in text, needle
    code, text, _ = run(capsys, "info", q8, "--model", files["clean"], "--json")
    info = json.loads(text)
    full = sum(t.numel() * t.element_size() for t in load_state_dict(files["clean"]).values())
    assert info["full_model"]["payload_bytes"] == full
    assert info["payload_bytes"] == sig8.nbytes
    assert info["full_model"]["ratio"] == pytest.approx(full / sig8.nbytes)
    assert [r["name"] for r in info["tensors"]] == sig8.names

    out = tmp_path / "patched.safetensors"
    code, text, _ = run(capsys, "patch", "--model", files["clean"], "--signature", f"{q8}:0.5",
                        "--signature", fp32, "-o", out)  # fmt: skip
    assert code == 0 and "14 of" in text
    base, patched, sig = load_state_dict(files["clean"]), load_state_dict(out), Signature.load(fp32)
    assert list(patched) == list(base)
    for k, v in base.items():
        if k in sig:
            torch.testing.assert_close(
                patched[k], v + 0.5 * sig8.tensors[k] + sig.tensors[k], rtol=0, atol=1e-7
            )
        else:
            assert torch.equal(patched[k], v)


def test_refusals_are_one_line_errors(files, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"w": [1.0]}, protocol=2))
    code, _, err = run(capsys, "info", bad)
    assert code == 2 and "pickle" in err and "Traceback" not in err
    code, _, err = run(capsys, "info", files["clean"])
    assert code == 2 and "not an rws signature" in err
    sig = tmp_path / "wide.safetensors"
    Signature("w", {"features.0.weight": torch.zeros(99, 3, 3, 3)}).save(sig)
    code, _, err = run(
        capsys,
        "patch",
        "--model",
        files["clean"],
        "--signature",
        sig,
        "-o",
        tmp_path / "o.safetensors",
    )
    assert code == 2 and "shape" in err


@pytest.mark.parametrize("verb", ["extract", "quantize", "info", "patch"])
def test_help_has_examples(verb: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"rws {verb} " in text


def test_quantize_low_rank_and_info(files, tmp_path: Path, capsys) -> None:
    src = tmp_path / "s.safetensors"
    code, _, _ = run(
        capsys, "extract", "--pretrained", files["pre"], "--clean", files["clean"],
        "--robust", files["robust"], "--name", "fog", "--layers", 3, "-o", src,
    )  # fmt: skip
    assert code == 0
    out = tmp_path / "lr.safetensors"
    code, text, _ = run(capsys, "quantize", src, "--rank", 2, "--bits", 4, "-o", out)
    assert code == 0 and "smaller" in text
    lr = Signature.load(out)
    assert lr.is_low_rank and all(f.rank <= 2 for f in lr.factors.values())
    code, text, _ = run(capsys, "info", out)
    assert code == 0 and "r2 int4" in text
    code, _, _ = run(capsys, "quantize", src, "--energy", 0.9, "--bits", 32, "-o", out)
    assert code == 0 and not Signature.load(out).is_quantized


def test_info_on_a_model_shows_unit_coverage(files, capsys) -> None:
    code, text, _ = run(capsys, "info", files["clean"], "--layers", 2)
    assert code == 0 and "first 2 units" in text and "% of the parameters" in text
    code, text, _ = run(capsys, "info", files["clean"], "--layers", 2, "--json")
    data = json.loads(text)
    assert data["layers"] == 2 and len(data["units"]) == 2 and 0 < data["share_of_parameters"] < 1
    assert data["architecture"] is None and data["recommended_units"] is None
    code, _, err = run(capsys, "info", files["clean"], "--layers", 99)
    assert code == 2 and "--layers" in err


def test_info_on_a_folder_names_the_recommended_k(files, tmp_path: Path, capsys) -> None:
    from rws_hub.archs import recommended_units
    from rws_hub.io.folder import save_model_folder

    folder = tmp_path / "folder"
    config = {"architecture": "vgg16_cifar", "classes": list("0123456789"), "width": 0.125}
    save_model_folder(folder, model=create_model("vgg16_cifar", width=0.125), config=config,
                      pretrained=load_state_dict(files["pre"]))  # fmt: skip
    code, text, _ = run(capsys, "info", folder, "--layers", 2)
    k = recommended_units("vgg16_cifar")
    assert code == 0 and k is not None and f"recommended K for vgg16_cifar: {k}" in text
    code, text, _ = run(capsys, "info", folder / "model.safetensors", "--layers", 1, "--json")
    data = json.loads(text)
    assert data["architecture"] == "vgg16_cifar" and data["recommended_units"] == k


def test_info_on_a_resnet_folder_pairs_each_conv_with_its_norm(tmp_path: Path, capsys) -> None:
    from rws_hub.io.folder import save_model_folder

    model = create_model("resnet20_cifar", width=0.5)
    config = {"architecture": "resnet20_cifar", "classes": list("0123456789"), "width": 0.5}
    folder = save_model_folder(tmp_path / "r20", model=model, config=config, pretrained=model)
    code, text, _ = run(capsys, "info", folder, "--layers", 10)
    assert code == 0
    assert "1. conv1 + bn1:" in text and "layer1.0.conv2 + layer1.0.bn2:" in text
    assert "layer2.0.downsample.0 + layer2.0.downsample.1:" in text
