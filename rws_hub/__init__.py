"""rws-hub: Robust Weight Signatures.

Corruption robustness delivered as tiny weight patches on the first K conv layers of a model:

    >>> import rws_hub
    >>> sig = rws_hub.extract(pretrained, clean, robust, name="fog", layers=7)
    >>> sig.quantize(bits=8).save("fog.safetensors")
    >>> with rws_hub.patch(model, {rws_hub.Signature.load("fog.safetensors"): 1.0}):
    ...     logits = model(images)   # the model is restored bitwise afterwards
"""

from __future__ import annotations

from rws_hub.core.extraction import extract, project
from rws_hub.core.layers import conv_layers, shallow_params
from rws_hub.core.lineage import fingerprint
from rws_hub.core.mix import Mix
from rws_hub.core.patching import active_mix, apply, patch, patched_tensors, remove, resolve_mix
from rws_hub.core.quantization import QuantizedTensor, quantize_tensor
from rws_hub.core.signature import Signature, cosine
from rws_hub.errors import (
    ArtifactError,
    InvalidMixError,
    RequestError,
    RWSError,
    SignatureMismatchError,
)
from rws_hub.io.files import load_state_dict, read_header, save_state_dict

__version__ = "0.1.0"

__all__ = [
    "Signature",
    "cosine",
    "extract",
    "project",
    "shallow_params",
    "conv_layers",
    "fingerprint",
    "Mix",
    "patch",
    "apply",
    "remove",
    "active_mix",
    "patched_tensors",
    "resolve_mix",
    "QuantizedTensor",
    "quantize_tensor",
    "read_header",
    "load_state_dict",
    "save_state_dict",
    "RWSError",
    "SignatureMismatchError",
    "ArtifactError",
    "InvalidMixError",
    "RequestError",
    "__version__",
]
