"""shallow_params / conv_layers: forward order of conv layers, for modules and state dicts."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from rws_hub import conv_layers, shallow_params
from rws_hub.archs import create_model
from rws_hub.core.layers import Unit, shallow_units, unit_params
from rws_hub.io.files import save_state_dict


def meta_model(name: str) -> nn.Module:
    """A torchvision model built on the meta device: no memory, no init cost; forward
    passes still run (shapes only), which is all layer tracing needs."""
    with torch.device("meta"):
        return getattr(torchvision.models, name)(weights=None)


class ReorderedNet(nn.Module):
    """Registers its convs in the opposite order to the one forward uses."""

    def __init__(self) -> None:
        super().__init__()
        self.late = nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.early = nn.Conv2d(3, 8, 3, padding=1)
        self.unused = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.late(torch.relu(self.early(x)))
        return self.head(x.mean((2, 3)))


class NeedsBigInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 100:
            raise ValueError("too small")
        return self.conv(x)


def test_vgg_cifar_module_and_state_dict_agree() -> None:
    m = create_model("vgg16_cifar", width=0.125)
    expected = []
    for i in (0, 2, 5, 7, 10, 12, 14):
        expected += [f"features.{i}.weight", f"features.{i}.bias"]
    assert shallow_params(m, 7) == expected
    assert shallow_params(m.state_dict(), 7) == expected
    assert len(shallow_params(m, None)) == 26


def test_safetensors_path(tmp_path) -> None:
    m = create_model("vgg16_cifar", width=0.125)
    save_state_dict(m.state_dict(), tmp_path / "m.safetensors")
    assert shallow_params(tmp_path / "m.safetensors", 2) == shallow_params(m, 2)


def test_lexicographic_state_dict_uses_natural_order(tmp_path) -> None:
    from safetensors.torch import load_file, save_file

    m = create_model("vgg16_cifar", width=0.125)
    save_file(m.state_dict(), str(tmp_path / "plain.safetensors"))  # no order recorded
    sd = load_file(str(tmp_path / "plain.safetensors"))
    assert list(sd) == sorted(sd)  # what load_file gives: features.10 before features.2
    assert shallow_params(sd, 7) == shallow_params(m, 7)
    assert shallow_params(tmp_path / "plain.safetensors", 7) == shallow_params(m, 7)


def test_forward_order_beats_registration_order() -> None:
    net = ReorderedNet()
    assert conv_layers(net) == ["early", "late", "unused"]
    assert shallow_params(net, 2) == ["early.weight", "early.bias", "late.weight"]
    # a state dict only knows registration order
    assert shallow_params(net.state_dict(), 1) == ["late.weight"]


def test_probe_changes_nothing() -> None:
    m = torchvision.models.resnet18(weights=None)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    shallow_params(m, 3)
    assert m.training and all(mod.training for mod in m.modules())
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_falls_back_to_224() -> None:
    assert shallow_params(NeedsBigInput(), 1) == ["conv.weight", "conv.bias"]


class NotAnImageModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Conv2d(3, 3, 1)
        self.a = nn.Conv2d(3, 3, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        raise TypeError("this model takes token ids")


def test_untraceable_model_uses_registration_order_with_warning() -> None:
    with pytest.warns(UserWarning, match="registration order"):
        assert shallow_params(NotAnImageModel(), 1) == ["b.weight", "b.bias"]


def test_too_many_layers() -> None:
    with pytest.raises(ValueError, match="only 3 conv layers"):
        shallow_params(ReorderedNet(), 4)
    with pytest.raises(ValueError):
        shallow_params(ReorderedNet(), 0)


def test_torchvision_vgg() -> None:
    vgg = meta_model("vgg16")
    assert shallow_params(vgg, 2) == [
        "features.0.weight", "features.0.bias", "features.2.weight", "features.2.bias",
    ]  # fmt: skip
    bn = meta_model("vgg16_bn")
    names = shallow_params(bn, 7)
    assert names[:4] == [
        "features.0.weight",
        "features.0.bias",
        "features.3.weight",
        "features.3.bias",
    ]
    assert names[-2:] == ["features.20.weight", "features.20.bias"]
    assert len(names) == 14
    assert shallow_params(bn.state_dict(), 7) == names


def test_torchvision_resnet18_downsample_in_forward_order() -> None:
    m = torchvision.models.resnet18(weights=None)
    layers = conv_layers(m)
    assert layers[:8] == [
        "conv1",
        "layer1.0.conv1", "layer1.0.conv2", "layer1.1.conv1", "layer1.1.conv2",
        "layer2.0.conv1", "layer2.0.conv2", "layer2.0.downsample.0",
    ]  # fmt: skip
    assert len(layers) == 20
    assert shallow_params(m, 8)[-1] == "layer2.0.downsample.0.weight"  # resnet convs: no bias
    assert shallow_params(m.state_dict(), 8) == shallow_params(m, 8)


def test_torchvision_resnet50() -> None:
    m = meta_model("resnet50")
    layers = conv_layers(m)
    assert layers[:5] == [
        "conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer1.0.downsample.0",
    ]  # fmt: skip
    assert len(layers) == 53
    assert shallow_params(m, 5) == [f"{n}.weight" for n in layers[:5]]
    assert shallow_params(m.state_dict(), 53) == shallow_params(m, 53)


def test_state_dict_order_survives_safetensors(tmp_path) -> None:
    net = ReorderedNet()
    save_state_dict(net.state_dict(), tmp_path / "r.safetensors")
    assert shallow_params(tmp_path / "r.safetensors", 1) == ["late.weight"]


def test_plain_safetensors_of_a_bn_network_pairs_like_the_module(tmp_path) -> None:
    """safetensors' own order sorts names within each dtype (the batch norms' int64 counters
    apart), so it is not registration order either: units still pair as on the module."""
    from safetensors.torch import load_file, save_file

    m = create_model("vgg16_bn_cifar", width=0.125)
    save_file(m.state_dict(), str(tmp_path / "bn.safetensors"))
    sd = load_file(str(tmp_path / "bn.safetensors"))
    assert list(sd) != sorted(sd)  # the int64 counters are grouped apart
    assert shallow_units(sd, 13) == shallow_units(m, 13)
    assert shallow_units(sd, 2)[1] == Unit("features.3", "features.4")
    assert unit_params(sd, 4) == unit_params(m, 4)


def _tv(name: str) -> nn.Module:
    return torchvision.models.get_model(name, weights=None, num_classes=10)


@pytest.mark.parametrize(
    "build",
    [
        lambda: create_model("resnet20_cifar"),
        lambda: create_model("resnet50_cifar", width=0.25),
        lambda: _tv("resnet18"),
        lambda: _tv("mobilenet_v3_small"),
        lambda: _tv("efficientnet_b0"),
        lambda: _tv("densenet121"),
    ],
    ids=[
        "resnet20_cifar",
        "resnet50_cifar",
        "tv.resnet18",
        "tv.mobilenet_v3_small",
        "tv.efficientnet_b0",
        "tv.densenet121",
    ],  # fmt: skip
)
def test_state_dict_units_pair_like_the_traced_module(build, tmp_path) -> None:
    """A ResNet's file sorts ``bn1`` before ``conv1`` and ``layer1.0.bn2`` before
    ``layer1.1.conv1``: pairing by adjacency there gave ``conv1 + layer1.0.bn1``. The names pair
    the units as the forward pass does, from the module's state dict, from this project's files
    and (but for DenseNet, whose ``conv0``/``norm0`` pairs and ``transition`` order only
    registration order gives) from safetensors' own sorted order."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    m = build()
    traced = shallow_units(m, None)
    assert any(u.norm for u in traced)
    assert shallow_units(m.state_dict(), None) == traced
    save_state_dict(m.state_dict(), tmp_path / "ours.safetensors")
    assert shallow_units(tmp_path / "ours.safetensors", None) == traced
    save_file(
        {k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "p.safetensors")
    )
    plain = shallow_units(load_file(str(tmp_path / "p.safetensors")), None)
    if isinstance(m, torchvision.models.DenseNet):  # names order it otherwise too
        assert sorted(u.conv for u in plain) == sorted(u.conv for u in traced)
    else:
        assert plain == traced
