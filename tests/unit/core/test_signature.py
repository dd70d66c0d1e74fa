"""Signature: algebra (matches tensor arithmetic), metadata, sizes, cosine, devices."""

from __future__ import annotations

import pytest
import torch

from rws_hub import Signature, SignatureMismatchError, cosine


def make(name: str, seed: int, names=("a.weight", "a.bias"), **meta) -> Signature:
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (4, 3, 3, 3), "a.bias": (4,), "b.weight": (2, 4, 1, 1)}
    tensors = {n: torch.randn(shapes[n], generator=g) for n in names}
    meta.setdefault("lineage", "sha256:0123456789abcdef")
    meta.setdefault("architecture", "tiny")
    return Signature(name, tensors, **meta)


def test_algebra_matches_tensor_arithmetic() -> None:
    a, b = make("a", 0), make("b", 1)
    for result, expect in [
        (a + b, {n: a.tensors[n] + b.tensors[n] for n in a.names}),
        (a - b, {n: a.tensors[n] - b.tensors[n] for n in a.names}),
        (-a, {n: -a.tensors[n] for n in a.names}),
        (0.5 * a, {n: 0.5 * a.tensors[n] for n in a.names}),
        (a * 0.5, {n: a.tensors[n] * 0.5 for n in a.names}),
        (a / 4, {n: a.tensors[n] / 4 for n in a.names}),
        (sum([a, b, a]), {n: a.tensors[n] + b.tensors[n] + a.tensors[n] for n in a.names}),
        (0.3 * a + 0.7 * b, {n: 0.3 * a.tensors[n] + 0.7 * b.tensors[n] for n in a.names}),
    ]:
        assert result.names == list(expect)
        for n, t in expect.items():
            torch.testing.assert_close(result.tensors[n], t, rtol=0, atol=1e-6)
    assert (a + b).lineage == a.lineage and (a + b).architecture == "tiny"


def test_union_of_names() -> None:
    a = make("a", 0)
    c = make("c", 2, names=("a.weight", "b.weight"))
    s = a + c
    assert set(s.names) == {"a.weight", "a.bias", "b.weight"}
    torch.testing.assert_close(s.tensors["b.weight"], c.tensors["b.weight"])
    torch.testing.assert_close(s.tensors["a.bias"], a.tensors["a.bias"])
    torch.testing.assert_close((a - c).tensors["b.weight"], -c.tensors["b.weight"])


def test_operands_untouched() -> None:
    a, b = make("a", 0), make("b", 1)
    before = {n: t.clone() for n, t in a.tensors.items()}
    _ = a + b
    _ = 2 * a
    _ = sum([a, b])
    assert all(torch.equal(before[n], a.tensors[n]) for n in a.names)


def test_mismatch_refused() -> None:
    a = make("a", 0)
    with pytest.raises(SignatureMismatchError, match="different lineage"):
        _ = a + make("b", 1, lineage="sha256:ffffffffffffffff")
    with pytest.raises(SignatureMismatchError, match="different architecture"):
        _ = a - make("b", 1, architecture="other")
    odd = Signature("odd", {"a.bias": torch.zeros(5)})
    with pytest.raises(SignatureMismatchError, match="shape"):
        _ = a + odd
    # unknown lineage combines with anything
    assert (a + make("u", 3, lineage=None)).lineage == a.lineage


def test_bad_scalars() -> None:
    a = make("a", 0)
    with pytest.raises(ValueError, match="finite"):
        _ = float("nan") * a
    with pytest.raises(TypeError):
        _ = a * a
    with pytest.raises(TypeError):
        _ = a + 1
    with pytest.raises(ZeroDivisionError):
        _ = a / 0


def test_introspection() -> None:
    a = make("fog", 0, layers=1, default_alpha=0.8)
    assert a.names == ["a.weight", "a.bias"]
    assert a.shapes == {"a.weight": torch.Size([4, 3, 3, 3]), "a.bias": torch.Size([4])}
    assert a.numel == 112 and a.nbytes == 448 and len(a) == 2 and "a.bias" in a
    r = repr(a)
    assert r.startswith("Signature('fog'") and "2 tensors" in r and "fp32" in r and len(r) < 200
    assert a.default_alpha == 0.8 and a.kind == "corruption" and a.quantization is None
    b = a.replace(name="fog2", default_alpha=0.5)
    assert b.name == "fog2" and b.default_alpha == 0.5 and b.names == a.names
    with pytest.raises(TypeError):
        a.replace(colour="red")


def test_validation() -> None:
    with pytest.raises(ValueError):
        Signature("", {})
    with pytest.raises(TypeError):
        Signature("x", {"a": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(ValueError):
        Signature("x", {}, default_alpha=float("inf"))


def test_to_dtype_and_device() -> None:
    a = make("a", 0)
    h = a.to("cpu", torch.float16)
    assert all(t.dtype == torch.float16 for t in h.tensors.values())
    assert h.name == a.name and h.lineage == a.lineage
    assert a.tensors["a.bias"].dtype == torch.float32


def test_cosine() -> None:
    a, b = make("a", 0), make("b", 1)
    assert cosine(a, a) == pytest.approx(1.0)
    assert cosine(a, -a) == pytest.approx(-1.0)
    flat_a = torch.cat([t.flatten() for t in a.tensors.values()]).double()
    flat_b = torch.cat([t.flatten() for t in b.tensors.values()]).double()
    expect = float(flat_a @ flat_b / (flat_a.norm() * flat_b.norm()))
    assert cosine(a, b) == pytest.approx(expect, abs=1e-12)
    assert cosine(a, 0 * a) == 0.0
