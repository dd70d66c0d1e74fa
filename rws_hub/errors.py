"""Exceptions raised by rws-hub. Every refusal names what was wrong."""

from __future__ import annotations

MAX_MESSAGE = 2000
"""Longest message an :class:`InvalidMixError` or :class:`RequestError` keeps: errors go back to
clients, and an answer must stay far below any server's response limit."""


def shorten(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (saying how long it was): how error
    messages echo client input."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 1]}… ({len(text)} characters)"


def bounded(message: object) -> str:
    """``message`` as text cut to :data:`MAX_MESSAGE` characters (saying how long it was)."""
    text = str(message)
    if len(text) <= MAX_MESSAGE:
        return text
    return text[: MAX_MESSAGE - 40] + f"… (message cut, {len(text)} characters)"


class RWSError(Exception):
    """Base class of every error rws-hub raises on purpose."""


class SignatureMismatchError(RWSError, ValueError):
    """A signature does not fit a model: unknown tensor, shape, architecture or lineage."""


class ArtifactError(RWSError, ValueError):
    """An artifact file is truncated, tampered with, foreign, or not safetensors."""


class InvalidMixError(RWSError, ValueError):
    """A mix {signature: alpha} is invalid: unknown name, NaN/inf or out-of-bound alpha. The
    message is bounded (:data:`MAX_MESSAGE`)."""

    def __init__(self, message: object = "") -> None:
        super().__init__(bounded(message))


class RequestError(RWSError, ValueError):
    """A serving request is malformed. ``status`` is the HTTP status to answer with. The
    message is bounded (:data:`MAX_MESSAGE`)."""

    def __init__(self, message: object, status: int = 400) -> None:
        super().__init__(bounded(message))
        self.status = status
