"""Low-rank signatures: factors by rank or energy, codes of the factors, algebra, files,
and the branch form of the delta."""

from __future__ import annotations

import pytest
import torch

import rws_hub
from rws_hub.archs import create_model
from rws_hub.core.deltas import LowRankDelta, patched_value
from rws_hub.core.lowrank import LowRank, factorize, rank_for_energy
from rws_hub.errors import ArtifactError


@pytest.fixture(scope="module")
def sig() -> rws_hub.Signature:
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", width=0.25)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(3)
    return rws_hub.Signature(
        "fog",
        {n: 0.01 * torch.randn(sd[n].shape, generator=g) for n in rws_hub.shallow_params(model, 4)},
        layers=4,
        lineage="sha256:test",
    )


def test_factorize_by_rank_and_energy() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 3, generator=g), torch.randn(3, 8 * 9, generator=g)
    t = (a @ b).reshape(16, 8, 3, 3)
    f = factorize(t, rank=3)
    assert f.rank == 3 and torch.allclose(f.materialize(), t, atol=1e-5)
    assert factorize(t, energy=0.999999).rank == 3
    assert factorize(t, rank=100).rank == 16  # capped at the smaller side
    assert rank_for_energy(torch.tensor([3.0, 1.0]), 0.9) == 1
    with pytest.raises(ValueError, match="exactly one"):
        factorize(t)
    with pytest.raises(ValueError):
        factorize(torch.ones(4), rank=1)


def test_low_rank_signature_sizes_and_values(sig) -> None:
    lr = sig.low_rank(rank=4)
    assert lr.is_low_rank and set(lr.factors) <= set(sig.tensors)
    assert all(sig.tensors[n].dim() >= 2 for n in lr.factors)
    assert lr.nbytes < sig.nbytes / 3
    for n, f in lr.factors.items():
        assert torch.equal(lr.tensors[n], f.materialize())
    q = sig.low_rank(rank=4, bits=8)
    assert q.is_quantized and q.nbytes < lr.nbytes / 3
    full = sig.low_rank(energy=1.0)
    for n in sig.tensors:
        torch.testing.assert_close(full.tensors[n], sig.tensors[n], atol=1e-5, rtol=1e-4)


def test_algebra_concatenates_factors(sig) -> None:
    a, b = sig.low_rank(rank=2), (2 * sig).replace(name="snow").low_rank(rank=3)
    s = a + b
    for n in a.factors:
        assert s.factors[n].rank == 5
        torch.testing.assert_close(s.tensors[n], a.tensors[n] + b.tensors[n], atol=1e-6, rtol=1e-5)
    d = a - b
    n = next(iter(a.factors))
    torch.testing.assert_close(d.tensors[n], a.tensors[n] - b.tensors[n], atol=1e-6, rtol=1e-5)
    h = 0.5 * a
    assert h.factors[n].rank == 2
    torch.testing.assert_close(h.tensors[n], 0.5 * a.tensors[n])


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_files_round_trip(sig, tmp_path, bits) -> None:
    lr = sig.low_rank(rank=3, bits=bits)
    lr.save(tmp_path / "fog.safetensors")
    back = rws_hub.Signature.load(tmp_path / "fog.safetensors")
    assert back.is_low_rank and sorted(back.factors) == sorted(lr.factors)
    for n in sig.tensors:
        assert torch.equal(back.tensors[n], lr.tensors[n]), n
    assert back.nbytes == lr.nbytes
    head = rws_hub.read_header(tmp_path / "fog.safetensors")
    entry = head["metadata"]["tensors"][next(iter(lr.factors))]
    assert entry["storage"] == "lowrank" and entry["rank"] == 3


def test_damaged_factors_refused(sig, tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    lr = sig.low_rank(rank=3)
    lr.save(tmp_path / "fog.safetensors")
    raw = load_file(str(tmp_path / "fog.safetensors"))
    meta = rws_hub.read_header(tmp_path / "fog.safetensors")
    key = next(k for k in raw if k.endswith("::U"))
    raw[key] = torch.zeros(raw[key].shape[0], 2)  # wrong rank
    from rws_hub.io.files import read_raw_header

    header, _ = read_raw_header(tmp_path / "fog.safetensors")
    save_file(raw, str(tmp_path / "bad.safetensors"), metadata=header["__metadata__"])
    with pytest.raises(ArtifactError):
        rws_hub.Signature.load(tmp_path / "bad.safetensors")
    assert meta["metadata"]["name"] == "fog"


def test_low_rank_delta_branch_and_kernel(sig) -> None:
    lr = sig.low_rank(rank=4)
    name = next(n for n in lr.factors if n.endswith("weight"))
    d = LowRankDelta(lr.factors[name])
    assert torch.equal(d.materialize(), lr.factors[name].materialize())
    conv = torch.nn.Conv2d(d.shape[1], d.shape[0], 3, padding=1)
    x = torch.randn(2, d.shape[1], 8, 8)
    want = torch.nn.functional.conv2d(x, d.materialize(), None, 1, 1)
    torch.testing.assert_close(d.branch(x, conv), want, atol=1e-5, rtol=1e-4)
    base = torch.randn(d.shape)
    torch.testing.assert_close(patched_value(base, [(d, 0.5)]), base + 0.5 * d.materialize())
    assert isinstance(lr.deltas("factors")[name], LowRankDelta)
    assert LowRank(torch.ones(4, 1), torch.ones(1, 2), (4, 2)).rank == 1
