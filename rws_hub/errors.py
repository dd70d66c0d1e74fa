"""Exceptions raised by rws-hub. Every refusal names what was wrong."""

from __future__ import annotations


class RWSError(Exception):
    """Base class of every error rws-hub raises on purpose."""


class SignatureMismatchError(RWSError, ValueError):
    """A signature does not fit a model: unknown tensor, shape, architecture or lineage."""


class ArtifactError(RWSError, ValueError):
    """An artifact file is truncated, tampered with, foreign, or not safetensors."""


class InvalidMixError(RWSError, ValueError):
    """A mix {signature: alpha} is invalid: unknown name, NaN/inf or out-of-bound alpha."""


class RequestError(RWSError, ValueError):
    """A serving request is malformed. ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
