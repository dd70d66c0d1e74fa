"""extract / project / fingerprint: the projection, its orthogonality, inputs of every kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from rws_hub import Signature, SignatureMismatchError, extract, fingerprint, project, shallow_params
from rws_hub.archs import create_model
from rws_hub.io.files import save_state_dict


def test_project_hand_computed() -> None:
    # τ_std = (1, 0), τ_c = (1, 1): the component along τ_std goes, (0, 1) stays.
    v = project(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.0]))
    assert torch.equal(v, torch.tensor([0.0, 1.0], dtype=torch.float64))
    # τ_std = (1, 1), τ_c = (2, 0): ⟨c,s⟩/⟨s,s⟩ = 1, v = (2, 0) - (1, 1) = (1, -1)
    v = project(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    assert torch.equal(v, torch.tensor([1.0, -1.0], dtype=torch.float64))
    # 2-D tensors are flattened: τ_std = [[0, 2], [0, 0]], τ_c = [[3, 4], [5, 0]] -> [[3, 0], [5, 0]]
    v = project(torch.tensor([[3.0, 4.0], [5.0, 0.0]]), torch.tensor([[0.0, 2.0], [0.0, 0.0]]))
    assert torch.equal(v, torch.tensor([[3.0, 0.0], [5.0, 0.0]], dtype=torch.float64))


def test_project_guard_zero_clean_vector() -> None:
    c = torch.tensor([0.5, -2.0, 3.0])
    assert torch.equal(project(c, torch.zeros(3)), c.double())
    with pytest.raises(SignatureMismatchError):
        project(torch.zeros(2), torch.zeros(3))


def finetuned(base: nn.Module, scale: float, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    m = create_model("vgg16_cifar", width=0.125)
    m.load_state_dict(base.state_dict())
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return m


@pytest.fixture(scope="module")
def trio() -> tuple[nn.Module, nn.Module, nn.Module]:
    torch.manual_seed(0)
    pre = create_model("vgg16_cifar", width=0.125)
    clean = finetuned(pre, 0.01, 1)
    # the robust model shares part of the clean model's direction, plus its own
    robust = finetuned(pre, 0.0, 2)
    with torch.no_grad():
        for pr, pc, pp, noise in zip(
            robust.parameters(),
            clean.parameters(),
            pre.parameters(),
            finetuned(pre, 0.003, 3).parameters(),
            strict=True,
        ):
            pr.copy_(pp + 0.7 * (pc - pp) + (noise - pp))
    return pre, clean, robust


def test_orthogonal_to_clean_vector(trio) -> None:
    pre, clean, robust = trio
    sig = extract(pre, clean, robust, name="fog", layers=7)
    sd_pre, sd_std, sd_c = pre.state_dict(), clean.state_dict(), robust.state_dict()
    assert sig.names == shallow_params(clean, 7) and len(sig.names) == 14
    for n, v in sig.tensors.items():
        assert v.dtype == torch.float32
        tau_std = (sd_std[n].double() - sd_pre[n].double()).flatten()
        tau_c = (sd_c[n].double() - sd_pre[n].double()).flatten()
        cos = torch.dot(v.double().flatten(), tau_std) / (v.double().norm() * tau_std.norm())
        assert abs(float(cos)) < 1e-5, n
        # before projection the robust vector clearly leaned on the clean one
        assert float(torch.dot(tau_c, tau_std) / (tau_c.norm() * tau_std.norm())) > 0.3
        torch.testing.assert_close(v.flatten(), project(tau_c, tau_std).float(), rtol=0, atol=0)


def test_metadata(trio) -> None:
    pre, clean, robust = trio
    sig = extract(pre, clean, robust, name="fog", layers=3, provenance={"severity": 5})
    assert isinstance(sig, Signature)
    assert sig.name == "fog" and sig.kind == "corruption" and sig.layers == 3
    assert sig.lineage == fingerprint(pre) and sig.architecture == "VGGCifar"
    assert sig.provenance["severity"] == 5 and sig.provenance["method"] == "rws-projection"
    assert sig.provenance["clean"] == fingerprint(clean)
    assert (
        extract(pre, clean, robust, name="x", architecture="vgg16_cifar").architecture
        == "vgg16_cifar"
    )
    clean.rws_architecture = "vgg16_cifar@w0.125"
    try:
        assert extract(pre, clean, robust, name="x").architecture == "vgg16_cifar@w0.125"
    finally:
        del clean.rws_architecture


def test_inputs_of_every_kind_agree(trio, tmp_path: Path) -> None:
    pre, clean, robust = trio
    ref = extract(pre, clean, robust, name="fog")
    paths = []
    for label, m in (("pre", pre), ("clean", clean), ("robust", robust)):
        save_state_dict(m.state_dict(), tmp_path / f"{label}.safetensors")
        paths.append(tmp_path / f"{label}.safetensors")
    from_files = extract(*paths, name="fog")
    from_dicts = extract(pre.state_dict(), clean.state_dict(), robust.state_dict(), name="fog")
    for other in (from_files, from_dicts):
        assert other.names == ref.names and other.lineage == ref.lineage
        assert all(torch.equal(other.tensors[n], ref.tensors[n]) for n in ref.names)
    assert from_files.architecture is None  # state dicts carry no class name


def test_explicit_params(trio) -> None:
    pre, clean, robust = trio
    sig = extract(pre, clean, robust, name="head", params=["classifier.weight", "classifier.bias"])
    assert sig.names == ["classifier.weight", "classifier.bias"] and sig.layers is None


def test_refusals(trio) -> None:
    pre, clean, robust = trio
    sd = dict(robust.state_dict())
    del sd["features.0.bias"]
    with pytest.raises(
        SignatureMismatchError, match="'features.0.bias' is missing from the robust"
    ):
        extract(pre, clean, sd, name="x")
    sd = dict(robust.state_dict())
    sd["features.0.weight"] = torch.zeros(1, 3, 3, 3)
    with pytest.raises(SignatureMismatchError, match="different shapes"):
        extract(pre, clean, sd, name="x")
    with pytest.raises(ValueError, match="only 13 conv layers"):
        extract(pre, clean, robust, name="x", layers=14)


def test_fingerprint(trio, tmp_path: Path) -> None:
    pre, clean, _ = trio
    fp = fingerprint(pre)
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 16
    assert fingerprint(pre) == fp == fingerprint(pre.state_dict())
    assert fingerprint(dict(reversed(list(pre.state_dict().items())))) == fp  # order-free
    save_state_dict(pre.state_dict(), tmp_path / "pre.safetensors")
    assert fingerprint(tmp_path / "pre.safetensors") == fp
    assert fingerprint(clean) != fp
    sd = {k: v.clone() for k, v in pre.state_dict().items()}
    sd["classifier.bias"][0] += 1e-6
    assert fingerprint(sd) != fp
    sd = {k: v.clone() for k, v in pre.state_dict().items()}
    sd["classifier.bias"] = sd["classifier.bias"].double()
    assert fingerprint(sd) != fp  # dtype counts
    # a pinned value, so the fingerprint (recorded in every artifact) stays stable
    pinned = {
        "a": torch.arange(4, dtype=torch.float32),
        "b.bias": torch.ones(2, dtype=torch.float16),
    }
    assert fingerprint(pinned) == "sha256:5d7c8362f7f470e5"
