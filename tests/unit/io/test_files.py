"""The signature file: round trips, header, and every refusal (truncated, tampered, foreign)."""

from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from rws_hub import ArtifactError, Signature, read_header
from rws_hub.io.files import (
    _digest,
    _encode,
    load_signature,
    load_state_dict,
    save_signature,
    save_state_dict,
)


@pytest.fixture()
def sig() -> Signature:
    g = torch.Generator().manual_seed(0)
    tensors = {
        "features.0.weight": torch.randn(8, 3, 3, 3, generator=g) * 0.01,
        "features.0.bias": torch.randn(8, generator=g) * 0.01,
        "features.2.weight": torch.randn(8, 8, 3, 3, generator=g) * 0.01,
    }
    return Signature(
        "fog",
        tensors,
        architecture="vgg16_cifar",
        lineage="sha256:0123456789abcdef",
        layers=2,
        default_alpha=0.75,
        provenance={"severity": 5, "notes": ["a", "b"]},
    )


def same(a: Signature, b: Signature) -> None:
    assert a.names == b.names
    assert all(torch.equal(a.tensors[n], b.tensors[n]) for n in a.names)
    for field in (
        "name",
        "kind",
        "architecture",
        "lineage",
        "layers",
        "default_alpha",
        "quantization",
        "provenance",
    ):
        assert getattr(a, field) == getattr(b, field), field


def test_fp32_round_trip(sig: Signature, tmp_path: Path) -> None:
    sig.save(tmp_path / "fog.safetensors")
    back = Signature.load(tmp_path / "fog.safetensors")
    same(sig, back)
    assert back.nbytes == sig.nbytes == 4 * sig.numel
    assert not back.is_quantized


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("scheme", ["linear", "log"])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_quantized_round_trip(
    sig: Signature, tmp_path: Path, bits: int, scheme: str, granularity: str
) -> None:
    q = sig.quantize(bits=bits, scheme=scheme, granularity=granularity)
    q.save(tmp_path / "q.safetensors")
    back = Signature.load(tmp_path / "q.safetensors")
    same(q, back)
    assert back.is_quantized and back.nbytes == q.nbytes
    head = read_header(tmp_path / "q.safetensors")
    assert head["payload_bytes"] == q.nbytes
    stored = head["stored"]["features.2.weight"]
    assert stored["dtype"] == ("I8" if bits == 8 else "U8")
    assert stored["nbytes"] == (576 if bits == 8 else 288)
    # Saving again writes the very same codes (no requantization drift)
    back.save(tmp_path / "q2.safetensors")
    first, second = load_file(tmp_path / "q.safetensors"), load_file(tmp_path / "q2.safetensors")
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_read_header(sig: Signature, tmp_path: Path) -> None:
    sig.save(tmp_path / "fog.safetensors")
    head = read_header(tmp_path / "fog.safetensors")
    meta = head["metadata"]
    assert meta["format"] == "rws-signature" and meta["format_version"] == "1"
    assert meta["name"] == "fog" and meta["layers"] == 2 and meta["default_alpha"] == 0.75
    assert meta["provenance"] == {"severity": 5, "notes": ["a", "b"]}
    assert meta["tensors"]["features.0.bias"] == {"shape": [8], "storage": "float32"}
    assert head["file_size"] == (tmp_path / "fog.safetensors").stat().st_size


def test_load_to_device(sig: Signature, tmp_path: Path) -> None:
    sig.save(tmp_path / "fog.safetensors")
    back = Signature.load(tmp_path / "fog.safetensors", device="cpu")
    assert all(t.device.type == "cpu" for t in back.tensors.values())


# -- refusals -----------------------------------------------------------------------------
def refuse(path: Path, match: str) -> None:
    with pytest.raises(ArtifactError, match=match):
        load_signature(path)


def test_refuses_pickle_and_zip(tmp_path: Path) -> None:
    p = tmp_path / "model.pt"
    p.write_bytes(pickle.dumps({"a": [1, 2, 3]}, protocol=2))
    refuse(p, "pickle")
    p.write_bytes(pickle.dumps({"a": 1}, protocol=4))
    refuse(p, "pickle")
    z = tmp_path / "ckpt.pt"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("archive/data.pkl", b"x")
    refuse(z, "zip archive")
    with pytest.raises(ArtifactError, match="pickle"):
        load_state_dict(p)


def test_refuses_missing_and_garbage(tmp_path: Path) -> None:
    refuse(tmp_path / "nope.safetensors", "no such file")
    g = tmp_path / "g.safetensors"
    g.write_bytes(b"hello")
    refuse(g, "not a safetensors file")
    g.write_bytes(b"just some text that is long enough")
    refuse(g, "not a safetensors file")


def test_refuses_truncated(sig: Signature, tmp_path: Path) -> None:
    p = tmp_path / "fog.safetensors"
    sig.save(p)
    data = p.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])
    refuse(cut, "truncated: tensors need")
    cut.write_bytes(data[: 8 + n // 2])
    refuse(cut, "truncated: the header says")


def test_refuses_header_not_json(tmp_path: Path) -> None:
    p = tmp_path / "bad.safetensors"
    body = b"{not json at all"
    p.write_bytes(struct.pack("<Q", len(body)) + body)
    refuse(p, "header is not JSON")


def test_refuses_foreign_state_dict(tmp_path: Path) -> None:
    p = tmp_path / "model.safetensors"
    save_state_dict({"features.0.weight": torch.zeros(2, 3, 3, 3)}, p)
    refuse(p, "not an rws signature.*full model state dict")
    save_file({"x": torch.zeros(2)}, str(p), metadata={"format": "pt"})
    refuse(p, "format marker 'pt'")


def rewrite(
    sig: Signature, path: Path, *, meta_changes=None, tensor_changes=None, fix_digest=True
) -> None:
    """Write a signature file by hand with some fields changed (as a tamperer would)."""
    tensors, meta = _encode(sig)
    meta.update(meta_changes or {})
    for k, v in (tensor_changes or {}).items():
        if v is None:
            tensors.pop(k)
        else:
            tensors[k] = v
    if fix_digest:
        meta["digest"] = _digest(meta, tensors)
    save_file(tensors, str(path), metadata=meta)


def test_refuses_unsupported_version(sig: Signature, tmp_path: Path) -> None:
    p = tmp_path / "v.safetensors"
    rewrite(sig, p, meta_changes={"format_version": "2"})
    refuse(p, "unsupported rws signature format version '2'")


def test_refuses_tampered_payload_and_metadata(sig: Signature, tmp_path: Path) -> None:
    p = tmp_path / "t.safetensors"
    sig.save(p)
    data = bytearray(p.read_bytes())
    data[-3] ^= 0x01  # flip one bit of the last tensor
    p.write_bytes(bytes(data))
    refuse(p, "tampered or corrupted")
    rewrite(sig, p, meta_changes={"default_alpha": "9.0"}, fix_digest=False)
    refuse(p, "tampered or corrupted")
    rewrite(sig, p, tensor_changes={"extra": torch.zeros(1)})
    refuse(p, "unexpected tensor")
    rewrite(sig, p, tensor_changes={"features.0.bias": None})
    refuse(p, "'features.0.bias' is listed in the metadata but missing")


def test_refuses_missing_scale(sig: Signature, tmp_path: Path) -> None:
    p = tmp_path / "s.safetensors"
    rewrite(sig.quantize(8), p, tensor_changes={"features.0.weight::scale": None})
    refuse(p, "stored as int8 but its scale 'features.0.weight::scale' is missing")


def test_refuses_nan(sig: Signature, tmp_path: Path) -> None:
    p = tmp_path / "n.safetensors"
    bad = sig.tensors["features.0.bias"].clone()
    bad[0] = float("nan")
    rewrite(sig, p, tensor_changes={"features.0.bias": bad})
    refuse(p, "'features.0.bias' holds NaN or inf")
    q = sig.quantize(4)
    rewrite(q, p, tensor_changes={"features.2.weight::scale": torch.tensor([float("inf")])})
    refuse(p, "holds NaN or inf")
    with pytest.raises(ArtifactError, match="NaN"):
        save_signature(
            Signature("x", {"a": torch.tensor([float("nan")])}), tmp_path / "x.safetensors"
        )


def test_refuses_bad_code_dtype(sig: Signature, tmp_path: Path) -> None:
    p = tmp_path / "d.safetensors"
    q = sig.quantize(8)
    rewrite(q, p, tensor_changes={"features.0.bias": torch.zeros(8, dtype=torch.int16)})
    refuse(p, "stored as int8 should be torch.int8")


def test_state_dict_round_trip_keeps_order(tmp_path: Path) -> None:
    sd = {
        "z.weight": torch.ones(2, 1, 1, 1),
        "a.weight": torch.zeros(3, 1, 1, 1),
        "a.bias": torch.zeros(3),
    }
    save_state_dict(sd, tmp_path / "m.safetensors", metadata={"k": "v"})
    back = load_state_dict(tmp_path / "m.safetensors")
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    head = json.loads((tmp_path / "m.safetensors").read_bytes()[8:].split(b"}}")[0] + b"}}")
    assert head["__metadata__"]["k"] == "v"
