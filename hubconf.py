"""torch.hub entrypoints of rws-hub: a clean backbone plus its Robust Weight Signatures.

    model = torch.hub.load("<owner>/rws-hub", "cifar10_vgg16", signatures="all")
    model = torch.hub.load("/path/to/clone", "cifar10_vgg16", source="local",
                           patch={"fog": 1.0})
    model = torch.hub.load("/path/to/clone", "cifar10_vgg16", source="local", patch="auto")
    sig = torch.hub.load("/path/to/clone", "signature", "gaussian_noise", source="local")

Weights come from the model folder ``model-store/cifar10-vgg16/`` next to this file (a clone),
or from the folder named by the environment variable ``RWS_HUB_FOLDER``, else from the
huggingface_hub repo (through its cache; ``HF_HUB_OFFLINE=1`` works once cached). Every file is
checked against the folder's sha256 manifest.
"""

# Only the entrypoints may be public names here: torch.hub.list() lists every public callable.
import warnings as _warnings

dependencies = ["torch", "torchvision", "safetensors", "huggingface_hub"]


def _weights(name):
    from rws_hub.io.hub import get_weights

    return get_weights(name)


def cifar10_vgg16(pretrained=True, signatures=None, patch=None, device="cpu", verify=True):
    """VGG-16 (CIFAR variant) trained on CIFAR-10, with Robust Weight Signatures.

    The model takes float images in [0, 1], shape (N, 3, 32, 32), and normalises inside.

    Args:
        pretrained (bool): load the clean backbone's weights; False gives an untrained model
            of the same architecture (and width).
        signatures (None | "all" | list[str]): signatures to attach as
            ``model.rws_signatures`` (``{name: Signature}``); from the hub only these files are
            downloaded. Names: ``CIFAR10_VGG16_Weights.DEFAULT.meta["signatures"]``.
        patch (None | dict[str, float] | "auto"): ``{name: alpha}`` to apply in place right
            away (the names are loaded if not in ``signatures``). Take it off with
            ``rws_hub.remove(model)``; use ``with rws_hub.patch(model, {...}):`` for a
            temporary patch, ``rws_hub.apply(model, {...})`` for a lasting one.
            ``"auto"``: every signature and the folder's corruption detector are loaded and
            a module is returned whose forward patches each image with the mix the detector
            chooses for it (``model.last_mixes`` / ``model.last_detected`` say what it chose
            and saw after each call); the backbone's own weights are never changed.
        device (str): where the weights go.
        verify (bool): check every file against the folder's sha256 manifest.

    Returns:
        nn.Module in eval mode with ``rws_signatures``, ``rws_lineage``,
        ``rws_architecture``, ``rws_config`` (and ``rws_refused``: signature files that failed
        their checks and were skipped, ``{file: reason}``); for ``patch="auto"`` an
        ``rws_hub.inference.engine.MixedModel`` whose ``.model`` is that backbone.
    """
    weights = _weights("cifar10_vgg16")
    if isinstance(patch, str):
        if patch.strip().lower() != "auto":
            raise ValueError(f"patch must be a dict {{name: alpha}} or 'auto', not {patch!r}")
        return _auto(weights, device=device, verify=verify)
    if not pretrained:
        if signatures or patch:
            raise ValueError("signatures and patch need pretrained=True (the backbone they fit)")
        return weights.build_model(pretrained=False).to(device).eval()
    names = signatures
    if patch:
        wanted = list(patch)
        if names is None:
            names = wanted
        elif names != "all":
            names = [names] if isinstance(names, str) else list(names)
            names += [n for n in wanted if n not in names]
    folder = weights.load(device=device, signatures=names, verify=verify)
    model = folder.model
    model.rws_refused = dict(folder.refused)
    if folder.refused:
        _warnings.warn(
            "signature files refused: " + "; ".join(f"{f}: {r}" for f, r in folder.refused.items()),
            stacklevel=2,
        )
    if patch:
        from rws_hub.core.patching import apply

        apply(model, dict(patch))
    return model


def _auto(weights, device, verify):
    from rws_hub.inference.engine import Engine

    folder = weights.load(device=device, signatures="all", verify=verify)
    if not folder.has_detector():
        raise ValueError(
            'patch="auto" needs a corruption detector, and this model folder ships none; '
            "pass patch={name: alpha} instead"
        )
    engine = Engine.from_folder(folder, device=device)
    if engine.detector is None:
        raise ValueError(f"the folder's detector was refused: {engine.refused}")
    wrapped = engine.as_module("auto").eval()
    model = folder.model
    for attr in ("rws_signatures", "rws_lineage", "rws_architecture", "rws_config"):
        setattr(wrapped, attr, getattr(model, attr))  # set by ModelFolder.load
    wrapped.rws_refused = dict(engine.refused)
    return wrapped


def signature(name, model="cifar10_vgg16", device="cpu"):
    """One Robust Weight Signature of a zoo model, e.g. ``signature("gaussian_noise")``.

    Only that signature's file (and the folder manifest, for its sha256 check) is read or,
    from the hub, downloaded. Patch a model with it:
    ``with rws_hub.patch(model, {sig: 1.0}): ...``.

    Args:
        name (str): signature name (a corruption such as ``"fog"``).
        model (str): the zoo entry it belongs to (default ``"cifar10_vgg16"``).
        device (str): where its tensors go.

    Returns:
        rws_hub.Signature
    """
    return _weights(model).signature(name, device=device)
