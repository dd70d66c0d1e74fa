"""patch / apply / remove / patched_tensors: exact arithmetic, bitwise restore, refusals."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

import rws_hub
from rws_hub import (
    InvalidMixError,
    Mix,
    Signature,
    SignatureMismatchError,
    active_mix,
    apply,
    patch,
    patched_tensors,
    remove,
    shallow_params,
)
from rws_hub.archs import create_model


def random_signature(model: nn.Module, name: str, k: int, seed: int, **meta) -> Signature:
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    tensors = {n: 0.01 * torch.randn(sd[n].shape, generator=g) for n in shallow_params(model, k)}
    return Signature(name, tensors, **meta)


def snapshot(model: nn.Module) -> dict[str, bytes]:
    return {
        k: v.detach().cpu().contiguous().numpy().tobytes() for k, v in model.state_dict().items()
    }


def assert_bitwise_equal(
    model: nn.Module, before: dict[str, torch.Tensor], raw: dict[str, bytes]
) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in after.items():
        assert torch.equal(v, before[k]), k
    assert snapshot(model) == raw


@pytest.fixture()
def tiny() -> nn.Module:
    torch.manual_seed(0)
    return create_model("vgg16_cifar", width=0.125)


def test_patch_adds_and_restores_bitwise(tiny: nn.Module) -> None:
    a = random_signature(tiny, "a", 7, 1)
    b = random_signature(tiny, "b", 3, 2)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    raw = snapshot(tiny)
    params = {id(p) for p in tiny.parameters()}
    with patch(tiny, {a: 0.7, b: -0.3}) as m:
        assert m is tiny
        sd = tiny.state_dict()
        for n in a.names:
            expect = before[n] + 0.7 * a.tensors[n] + (-0.3 * b.tensors[n] if n in b else 0)
            torch.testing.assert_close(sd[n], expect, rtol=0, atol=1e-7)
        untouched = set(before) - set(a.names)
        assert all(torch.equal(sd[n], before[n]) for n in untouched)
    assert_bitwise_equal(tiny, before, raw)
    assert {id(p) for p in tiny.parameters()} == params  # same tensor objects


def test_restores_after_exception(tiny: nn.Module) -> None:
    a = random_signature(tiny, "a", 7, 1)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    raw = snapshot(tiny)
    with pytest.raises(RuntimeError, match="boom"), patch(tiny, [a]):
        assert not torch.equal(tiny.features[0].weight, before["features.0.weight"])
        raise RuntimeError("boom")
    assert_bitwise_equal(tiny, before, raw)


def test_nested_and_repeated_patches_restore(tiny: nn.Module) -> None:
    a = random_signature(tiny, "a", 7, 1)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    raw = snapshot(tiny)
    for _ in range(3):
        with patch(tiny, {a: 1.0}), patch(tiny, {a: 0.1}):
            pass
    assert_bitwise_equal(tiny, before, raw)


def test_output_changes_and_comes_back(tiny: nn.Module) -> None:
    x = torch.rand(2, 3, 32, 32)
    tiny.eval()
    a = random_signature(tiny, "a", 7, 1)
    clean = tiny(x)
    with patch(tiny, {a: 5.0}):
        assert not torch.equal(tiny(x), clean)
    assert torch.equal(tiny(x), clean)


def test_names_resolve_from_model_or_argument(tiny: nn.Module) -> None:
    a = random_signature(tiny, "fog", 2, 1, default_alpha=0.5)
    before_sd = {k: v.clone() for k, v in tiny.state_dict().items()}
    ref = patched_tensors(before_sd, {a: 0.5})
    tiny.rws_signatures = {"fog": a}
    for mix in ("fog", ["fog"], {"fog": 0.5}, Mix({"fog": 0.5}), a):
        with patch(tiny, mix):
            assert all(torch.equal(tiny.state_dict()[n], ref[n]) for n in ref)
    other = create_model("vgg16_cifar", width=0.125)
    with patch(other, "fog:0.5", signatures={"fog": a}):
        pass
    with patch(tiny, "fog:-0.5"):  # strings may take a signature off, like dicts
        neg = patched_tensors(before_sd, {a: -0.5})
        assert all(torch.equal(tiny.state_dict()[n], neg[n]) for n in neg)
    with patch(tiny, {"fog": torch.tensor(0.5)}):
        assert all(torch.equal(tiny.state_dict()[n], ref[n]) for n in ref)
    with pytest.raises(InvalidMixError, match="unknown signature 'snow'; known: fog"):
        patch(tiny, {"snow": 1.0}).__enter__()
    with pytest.raises(InvalidMixError, match="none are loaded"):
        patch(other, ["fog"]).__enter__()


def test_patched_tensors_is_functional_and_matches_patch(tiny: nn.Module) -> None:
    a = random_signature(tiny, "a", 7, 1)
    b = random_signature(tiny, "b", 2, 2)
    base = {k: v.clone() for k, v in tiny.state_dict().items()}
    raw = {k: v.numpy().tobytes() for k, v in base.items()}
    out = patched_tensors(base, {a: 1.0, b: 0.25})
    assert set(out) == set(a.names)
    assert {k: v.numpy().tobytes() for k, v in base.items()} == raw  # base untouched
    with patch(tiny, {a: 1.0, b: 0.25}):
        sd = tiny.state_dict()
        assert all(torch.equal(sd[n], out[n]) for n in out)  # bitwise the same result
    assert patched_tensors(base, {}) == {}
    assert patched_tensors(base, None) == {}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1", None])
def test_bad_alpha_refused_before_touching(tiny: nn.Module, bad: object) -> None:
    a = random_signature(tiny, "a", 2, 1)
    raw = snapshot(tiny)
    with pytest.raises(InvalidMixError, match="alpha"):
        patch(tiny, {a: bad}).__enter__()
    with pytest.raises(InvalidMixError, match="alpha"):
        patched_tensors(tiny.state_dict(), {a: bad})
    assert snapshot(tiny) == raw


def test_unknown_tensor_and_shape_refused(tiny: nn.Module) -> None:
    raw = snapshot(tiny)
    good = random_signature(tiny, "good", 2, 1)
    unknown = Signature(
        "x", {"features.0.weight": good.tensors["features.0.weight"], "nope.weight": torch.zeros(1)}
    )
    with pytest.raises(
        SignatureMismatchError, match="'nope.weight', which the model does not have"
    ):
        patch(tiny, {good: 1.0, unknown: 1.0}).__enter__()
    assert snapshot(tiny) == raw  # refused atomically: nothing was added
    wrong = Signature("w", {"features.0.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(SignatureMismatchError, match=r"shape \(3, 3, 3, 3\)"):
        patch(tiny, [wrong]).__enter__()
    with pytest.raises(SignatureMismatchError, match="did you mean features.0.weight"):
        patched_tensors(tiny.state_dict(), [Signature("t", {"feature.0.weight": torch.zeros(1)})])


def test_lineage_and_architecture_refused_unless_forced(tiny: nn.Module) -> None:
    tiny.rws_lineage = "sha256:aaaaaaaaaaaaaaaa"
    tiny.rws_architecture = "vgg16_cifar"
    ok = random_signature(
        tiny, "ok", 2, 1, lineage="sha256:aaaaaaaaaaaaaaaa", architecture="vgg16_cifar"
    )
    other_lineage = ok.replace(name="l", lineage="sha256:bbbbbbbbbbbbbbbb")
    other_arch = ok.replace(name="r", architecture="resnet50")
    with patch(tiny, [ok]), patch(tiny, [ok.replace(name="w", architecture="vgg16_cifar@w0.125")]):
        pass  # a more specific architecture id of the same family is accepted
    raw = snapshot(tiny)
    with pytest.raises(
        SignatureMismatchError, match="lineage 'sha256:bbbbbbbbbbbbbbbb'.*force=True"
    ):
        patch(tiny, [other_lineage]).__enter__()
    with pytest.raises(SignatureMismatchError, match="architecture 'resnet50'"):
        apply(tiny, [other_arch])
    assert snapshot(tiny) == raw
    with patch(tiny, [other_lineage, other_arch], force=True):
        assert snapshot(tiny) != raw
    assert snapshot(tiny) == raw
    with pytest.raises(SignatureMismatchError, match="lineage"):
        patched_tensors(tiny.state_dict(), [other_lineage], lineage=tiny.rws_lineage)


def test_apply_remove_active_mix(tiny: nn.Module) -> None:
    a = random_signature(tiny, "fog", 7, 1)
    b = random_signature(tiny, "snow", 3, 2)
    tiny.rws_signatures = {"fog": a, "snow": b}
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    raw = snapshot(tiny)
    assert active_mix(tiny).is_empty
    assert apply(tiny, {"fog": 0.5}) == Mix({"fog": 0.5})
    assert str(apply(tiny, {a: 0.25, b: 1.0})) == "fog:0.75,snow:1"
    expect = patched_tensors(before, {a: 0.75, b: 1.0})
    for n, t in expect.items():
        torch.testing.assert_close(tiny.state_dict()[n], t, rtol=0, atol=1e-7)
    with patch(tiny, {"snow": 2.0}):
        assert active_mix(tiny) == {"fog": 0.75, "snow": 1.0}
    assert remove(tiny) == 2
    assert active_mix(tiny).is_empty
    assert_bitwise_equal(tiny, before, raw)
    assert remove(tiny) == 0


def test_half_precision_model(tiny: nn.Module) -> None:
    tiny.half()
    a = random_signature(tiny, "a", 2, 1)
    raw = snapshot(tiny)
    with patch(tiny, {a: 1.0}):
        w = tiny.features[0].weight
        assert w.dtype == torch.float16
    assert snapshot(tiny) == raw


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.branch = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.branch(x)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("arch", ["vgg16", "vgg16_bn", "resnet18", "resnet50", "custom"])
def test_architectures(arch: str) -> None:
    torch.manual_seed(0)
    if arch == "custom":
        model = SmallNet()
    elif arch.startswith("vgg"):
        # VGG's 120 M classifier weights only cost init time here: build the real torchvision
        # module on the meta device, then give it zeroed CPU storage and random conv weights.
        with torch.device("meta"):
            model = getattr(torchvision.models, arch)(weights=None)
        model = model.to_empty(device="cpu")
        with torch.no_grad():
            for t in model.state_dict().values():
                t.zero_()
            for m in model.modules():
                if isinstance(m, nn.Conv2d):
                    m.weight.normal_(0, 0.05)
    else:
        model = getattr(torchvision.models, arch)(weights=None)
    k = 2 if arch == "custom" else 7
    sig = random_signature(model, "sig", k, 3)
    expected = {"custom": 3, "vgg16": 14, "vgg16_bn": 14, "resnet18": 7, "resnet50": 7}[arch]
    assert len(sig.names) == expected
    # Only the covered tensors can change; snapshot those (the big classifiers are large).
    sd = model.state_dict()
    before = {n: sd[n].clone() for n in sig.names}
    raw = {n: sd[n].numpy().tobytes() for n in sig.names}
    last = list(sd)[-2]
    last_before = sd[last].clone()
    with patch(model, {sig: 2.0}):
        for n in sig.names:
            torch.testing.assert_close(sd[n], before[n] + 2.0 * sig.tensors[n], rtol=0, atol=1e-6)
    assert all(torch.equal(sd[n], before[n]) for n in sig.names)
    assert {n: sd[n].numpy().tobytes() for n in sig.names} == raw
    assert torch.equal(sd[last], last_before)


def test_help_reads_well() -> None:
    doc = rws_hub.patch.__doc__
    assert doc and "bitwise" in doc and "Example" in doc and "force" in doc


def test_remove_one_signature(tiny: nn.Module) -> None:
    """Taking one signature off leaves exactly what applying the others alone gives."""
    a = random_signature(tiny, "fog", 7, 1)
    b = random_signature(tiny, "snow", 3, 2)
    c = random_signature(tiny, "contrast", 5, 3)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    raw = snapshot(tiny)
    apply(tiny, {a: 0.5, b: 1.0})
    apply(tiny, {c: 0.25})
    assert remove(tiny, "snow") == 1
    assert active_mix(tiny) == {"fog": 0.5, "contrast": 0.25}
    want = snapshot(tiny)
    remove(tiny)
    assert_bitwise_equal(tiny, before, raw)
    apply(tiny, {a: 0.5})
    apply(tiny, {c: 0.25})
    assert snapshot(tiny) == want
    with pytest.raises(InvalidMixError, match="not applied"):
        remove(tiny, "snow")
    assert remove(tiny, "fog") == 1 and remove(tiny, "contrast") == 1
    assert active_mix(tiny).is_empty
    assert_bitwise_equal(tiny, before, raw)
