"""torch.hub entrypoints of rws-hub: a clean backbone plus its Robust Weight Signatures.

    model = torch.hub.load("<owner>/rws-hub", "cifar10_resnet20", signatures="all")
    model = torch.hub.load("/path/to/clone", "cifar10_resnet20", source="local",
                           patch={"fog": 1.0})
    model = torch.hub.load("/path/to/clone", "cifar10_resnet20", source="local", patch="auto")
    sig = torch.hub.load("/path/to/clone", "signature", "gaussian_noise", source="local")

One entrypoint per zoo entry, generated from its weights enum in ``rws_hub.zoo.weights``
(``tests/integration/test_hubconf.py`` checks that every registered enum has its line here).
Weights come from the entry's folder ``model-store/<entry>/`` next to this file (a clone), or
from the folder named by ``RWS_HUB_FOLDER``, else from the huggingface_hub repo (through its
cache; ``HF_HUB_OFFLINE=1`` works once cached). Every file is checked against the folder's
sha256 manifest.
"""

# Only the entrypoints may be public names here: torch.hub.list() lists every public callable.
from rws_hub.inference.engine import Engine as _Engine
from rws_hub.zoo import weights as _weights

dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub"]


def _auto(folder, device):
    """``patch="auto"``: the engine's module that patches each image with its detected mix."""
    engine = _Engine.from_folder(folder, device=device)
    if engine.detector is None:
        raise ValueError(f"the folder's detector was refused: {engine.refused}")
    module = engine.as_module("auto").eval()
    module.rws_refused = dict(engine.refused)
    return module


# -- one line per zoo entry ------------------------------------------------------------------
cifar10_resnet20 = _weights.entrypoint(_weights.CIFAR10_RESNET20_Weights, auto=_auto)
cifar10_vgg16_bn = _weights.entrypoint(_weights.CIFAR10_VGG16_BN_Weights, auto=_auto)
cifar10_vgg16 = _weights.entrypoint(_weights.CIFAR10_VGG16_Weights, auto=_auto)
tinyimagenet32_vgg16_bn = _weights.entrypoint(_weights.TINYIMAGENET32_VGG16_BN_Weights, auto=_auto)

# -- generic entrypoints ---------------------------------------------------------------------
signature = _weights.signature_entrypoint
