"""Framework-free parsing of one REST inference request into an :class:`InferenceRequest`.

Two wire forms are accepted:

* JSON (``Content-Type: application/json``)::

      {"image": "<base64 PNG/JPEG/...>",
       "signatures": {"gaussian_noise": 1.0, "fog": 0.5} | ["fog", ...] | "fog:0.5" | null | "auto",
       "top_k": 5}

  ``image`` may carry a ``data:image/...;base64,`` prefix. Unknown fields are refused.
* raw image bytes (``image/*`` or ``application/octet-stream``) with the mix and ``top_k`` in
  the query string: ``?signatures=gaussian_noise:1,fog:0.5&top_k=3``.

Every refusal is a :class:`~rws_hub.errors.RequestError` whose ``status`` is the HTTP status to
answer with (400 bad request, 413 too large, 415 unsupported media type) and whose message names
what was wrong.

Images: PNG, JPEG, GIF (first frame), BMP, WebP and TIFF (first page); any mode (L, LA, P, RGBA,
CMYK, 1, I;16, I, F, ...) is converted to RGB (alpha is dropped; 16-bit and float gray are scaled
to [0, 1] from their full range). The pixel count is checked from the header *before* decoding
(decompression bombs are refused with 413). The image is then resized so that its shorter side
equals the model's input side and center-cropped to the input size (aspect ratio kept; a square
image is simply resized), and returned as float (3, H, W) in [0, 1].
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from rws_hub.core.mix import Mix
from rws_hub.errors import InvalidMixError, RequestError, shorten

__all__ = [
    "ALLOWED_FORMATS",
    "InferenceRequest",
    "RequestLimits",
    "RequestParser",
    "decode_image",
]

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
"""Image formats Pillow may use to decode a request (no EPS, no exotic plug-ins)."""

_JSON_TYPES = ("application/json",)
_IMAGE_TYPES = ("application/octet-stream", "application/x-image")
_FIELDS = ("image", "signatures", "top_k")


@dataclass(frozen=True)
class InferenceRequest:
    """One parsed request: ``image`` float (3, H, W) in [0, 1], ``mix`` a validated
    :class:`Mix` or ``"auto"``, and ``top_k``."""

    image: torch.Tensor
    mix: Mix | Literal["auto"]
    top_k: int


@dataclass(frozen=True)
class RequestLimits:
    """Bounds a request must respect.

    ``max_body_bytes`` (413 above), ``max_pixels`` (width x height, 413 above), ``min_side``
    (smallest image side in pixels, 400 below), ``max_json_depth`` (nesting, 400 above).
    """

    max_body_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 25_000_000
    min_side: int = 8
    max_json_depth: int = 8


@dataclass
class RequestParser:
    """Parses requests for one model: its signatures, alpha limits, classes and input size.

    Args:
        known: the loaded signatures' default alphas, ``{name: alpha}`` (names not here are
            refused, listing these).
        num_classes: the largest ``top_k`` accepted.
        input_size: the (H, W) images are resized to.
        max_alpha: bound on ``|alpha|`` (``None``: none).
        allow_negative: accept negative alphas.
        auto: whether ``"auto"`` is available (a detector is loaded).
        default_top_k: ``top_k`` when the request gives none (clipped to ``num_classes``).
        limits: size limits (:class:`RequestLimits`).
    """

    known: Mapping[str, float]
    num_classes: int
    input_size: tuple[int, int] = (32, 32)
    max_alpha: float | None = None
    allow_negative: bool = False
    auto: bool = False
    default_top_k: int = 5
    limits: RequestLimits = field(default_factory=RequestLimits)

    @classmethod
    def for_engine(cls, engine: Any, **kwargs: Any) -> RequestParser:
        """A parser matching an :class:`~rws_hub.inference.engine.Engine` (its signatures and limits)."""
        kwargs.setdefault("known", engine.defaults)
        kwargs.setdefault("num_classes", len(engine.classes))
        kwargs.setdefault("input_size", engine.input_size)
        kwargs.setdefault("max_alpha", engine.max_alpha)
        kwargs.setdefault("allow_negative", engine.allow_negative)
        kwargs.setdefault("auto", engine.detector is not None)
        return cls(**kwargs)

    # -- public ---------------------------------------------------------------------------

    def parse(
        self,
        body: Any,
        *,
        content_type: str | None = None,
        query: Mapping[str, Any] | None = None,
    ) -> InferenceRequest:
        """Parse one request.

        Args:
            body: the request body: ``bytes``/``bytearray`` (raw), ``str`` (JSON text) or an
                already decoded JSON object (``dict``).
            content_type: the request's Content-Type (parameters such as ``; charset`` are
                ignored). ``None`` guesses from the body: JSON if it starts with ``{``, else an
                image.
            query: query-string parameters (``signatures``, ``top_k``) for raw image bodies;
                values may be str or bytes.

        Raises:
            RequestError: with the HTTP status and a message naming the problem.
        """
        query = dict(query or {})
        ctype = _media_type(content_type)
        if isinstance(body, Mapping):
            return self._from_json(body, query)
        if isinstance(body, (bytes, bytearray, memoryview)):
            data = bytes(body)
        elif isinstance(body, str):
            if ctype and ctype not in _JSON_TYPES and not ctype.endswith("+json"):
                raise RequestError(
                    f"unsupported Content-Type {shorten(ctype)} for a text body; send JSON "
                    "(application/json) or image bytes (image/png, image/jpeg, ...)",
                    415,
                )
            data = body.encode("utf-8")
            ctype = ctype or "application/json"
        elif body is None:
            if ctype == "application/x-www-form-urlencoded":
                # A server that decodes form bodies (TorchServe) leaves no image bytes behind.
                # rws serve's gateway (rws_hub/launch/gateway.py) answers such bodies itself
                # with the same text; this is the answer under KServe or --no-gateway.
                raise RequestError(
                    "the body was sent as a form (Content-Type: application/x-www-form-"
                    "urlencoded, what curl --data-binary sends unless told otherwise); send a "
                    "raw image with Content-Type: image/png (or image/jpeg, ...) or a JSON "
                    "request with Content-Type: application/json",
                    415,
                )
            raise RequestError("empty request: no body", 400)
        else:
            raise RequestError(f"unsupported body type {type(body).__name__}", 400)

        if len(data) > self.limits.max_body_bytes:
            raise RequestError(
                f"request body is {len(data)} bytes, above the limit of "
                f"{self.limits.max_body_bytes}",
                413,
            )
        if not data:
            raise RequestError("empty request: the body has 0 bytes", 400)
        if ctype is None:
            ctype = "application/json" if data.lstrip()[:1] == b"{" else "application/octet-stream"
        if ctype in _JSON_TYPES or ctype.endswith("+json"):
            return self._from_json(self._load_json(data), query)
        if ctype.startswith("image/") or ctype in _IMAGE_TYPES:
            image = decode_image(data, self.input_size, limits=self.limits)
            return InferenceRequest(
                image=image,
                mix=self.parse_mix(_text(query.get("signatures"), "signatures")),
                top_k=self.parse_top_k(_text(query.get("top_k"), "top_k"), text=True),
            )
        raise RequestError(
            f"unsupported Content-Type {shorten(ctype)}; send application/json or image bytes "
            "(image/png, image/jpeg, application/octet-stream)",
            415,
        )

    def parse_mix(self, obj: Any) -> Mix | Literal["auto"]:
        """Validate a mix from a request (dict, list of names, ``"a:1,b:0.5"``, null, ``"auto"``)."""
        if isinstance(obj, str) and obj.strip().lower() == "auto":
            if not self.auto:
                raise RequestError(
                    '"auto" needs a corruption detector, and this model has none loaded; '
                    f"name the signatures instead ({_listing(self.known)})",
                    400,
                )
            return "auto"
        if obj is not None and not isinstance(obj, (str, list, dict)):
            raise RequestError(
                "'signatures' must be an object {name: alpha}, a list of names, a string "
                f"'name:alpha,...', null or \"auto\"; got {_json_type(obj)}",
                400,
            )
        try:
            mix = Mix.parse(
                obj,
                known=self.known.keys(),
                defaults=self.known,
                max_alpha=self.max_alpha,
                allow_negative=self.allow_negative,
            )
        except InvalidMixError as exc:
            raise RequestError(f"bad 'signatures': {exc}", 400) from None
        return mix.without_zeros()

    def parse_top_k(self, value: Any, *, text: bool = False) -> int:
        """``top_k`` from JSON (an int) or, with ``text=True``, from a query string (decimal
        text); it must lie in 1..num_classes."""
        if value is None:
            return max(1, min(self.default_top_k, self.num_classes))
        if isinstance(value, str) and text:
            digits = value.strip()  # ASCII only: '²' is a digit to str, not to int()
            if not (digits.isascii() and digits.isdigit()) or len(digits) > 6:
                raise RequestError(f"'top_k' must be an integer, got {shorten(value)}", 400)
            value = int(digits)
        elif isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and math.isfinite(value):
                value = int(value)
            else:
                raise RequestError(f"'top_k' must be an integer, got {_json_type(value)}", 400)
        if not 1 <= value <= self.num_classes:
            raise RequestError(
                f"'top_k' must be between 1 and {self.num_classes} (the number of classes), "
                f"got {value}",
                400,
            )
        return value

    # -- internals ------------------------------------------------------------------------

    def _load_json(self, data: bytes) -> Any:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("the JSON body is not valid UTF-8", 400) from None
        try:
            obj = json.loads(text, object_pairs_hook=_no_duplicates)
        except RequestError:
            raise
        except RecursionError:
            raise RequestError("the JSON body is nested too deeply", 400) from None
        except ValueError as exc:
            raise RequestError(f"the body is not valid JSON: {exc}", 400) from None
        return obj

    def _from_json(self, obj: Any, query: Mapping[str, Any]) -> InferenceRequest:
        if not isinstance(obj, Mapping):
            raise RequestError(
                f"the JSON body must be an object with 'image', got {_json_type(obj)}", 400
            )
        depth = _depth(obj)
        if depth > self.limits.max_json_depth:
            raise RequestError(
                f"the JSON body is nested {depth} levels deep; at most "
                f"{self.limits.max_json_depth}",
                400,
            )
        extra = sorted(str(k) for k in obj if k not in _FIELDS)
        if extra:
            raise RequestError(
                f"unknown field(s) {', '.join(map(repr, extra))}; expected "
                f"{', '.join(map(repr, _FIELDS))}",
                400,
            )
        if "image" not in obj:
            raise RequestError("missing 'image' (a base64-encoded PNG or JPEG)", 400)
        raw = obj["image"]
        if not isinstance(raw, str):
            raise RequestError(f"'image' must be a base64 string, got {_json_type(raw)}", 400)
        if len(raw) > self.limits.max_body_bytes * 4 // 3 + 4:
            raise RequestError(
                f"'image' is {len(raw)} characters of base64, above the body limit of "
                f"{self.limits.max_body_bytes} bytes",
                413,
            )
        image = decode_image(_b64decode(raw), self.input_size, limits=self.limits)
        signatures = obj.get("signatures", _text(query.get("signatures"), "signatures"))
        if "top_k" in obj:
            top_k = self.parse_top_k(obj["top_k"])
        else:
            top_k = self.parse_top_k(_text(query.get("top_k"), "top_k"), text=True)
        return InferenceRequest(image=image, mix=self.parse_mix(signatures), top_k=top_k)


# --------------------------------------------------------------------------------------------
# images


def decode_image(
    data: bytes, size: tuple[int, int] = (32, 32), *, limits: RequestLimits | None = None
) -> torch.Tensor:
    """Decode image bytes to float (3, H, W) in [0, 1] at ``size`` (shorter side resized,
    center crop). Refuses empty, unknown, truncated, too small and too large images with a
    :class:`RequestError` (400, or 413 for too many pixels)."""
    limits = limits or RequestLimits()
    if not data:
        raise RequestError("the image is empty (0 bytes)", 400)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestError(f"image too large: {exc}", 413) from None
        except UnidentifiedImageError:
            raise RequestError(
                f"the data is not an image in a supported format ({', '.join(ALLOWED_FORMATS)})",
                400,
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise RequestError(f"the image cannot be read: {exc}", 400) from None
        width, height = img.size
        if width * height > limits.max_pixels:
            raise RequestError(
                f"image is {width}x{height} = {width * height} pixels, above the limit of "
                f"{limits.max_pixels}",
                413,
            )
        if min(width, height) < limits.min_side:
            raise RequestError(
                f"image is {width}x{height}; the smallest side must be at least "
                f"{limits.min_side} pixels",
                400,
            )
        try:
            img.seek(0)  # first frame of an animation / first page of a TIFF
            if img.format == "JPEG":
                img.draft("RGB", (size[1] * 2, size[0] * 2))  # decode large JPEGs reduced
            img.load()
            array = _to_rgb_array(img, size)
        except RequestError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise RequestError(f"image too large: {exc}", 413) from None
        except (OSError, ValueError, SyntaxError, EOFError, MemoryError) as exc:
            raise RequestError(f"the image is truncated or corrupt: {exc}", 400) from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _to_rgb_array(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Float32 (H, W, 3) in [0, 1] at ``size``, from any Pillow mode."""
    target = (size[1], size[0])  # Pillow speaks (width, height)
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        scale = 1.0 if mode == "F" else 65535.0
        gray = img.convert("F") if mode != "F" else img
        if not np.isfinite(np.asarray(gray, dtype=np.float32)).all():
            raise RequestError("the image holds NaN or infinite pixel values", 400)
        gray = ImageOps.fit(gray, target, method=Image.Resampling.BILINEAR)
        arr = np.clip(np.asarray(gray, dtype=np.float32) / scale, 0.0, 1.0)
        return np.repeat(arr[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGBA").convert("RGB") if mode in ("P", "PA") else img.convert("RGB")
    img = ImageOps.fit(img, target, method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32) / 255.0


# --------------------------------------------------------------------------------------------
# small helpers


def _media_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    return content_type.split(";", 1)[0].strip().lower() or None


def _b64decode(text: str) -> bytes:
    if text.startswith("data:"):
        head, sep, rest = text.partition(",")
        if not sep or ";base64" not in head:
            raise RequestError("'image' data URL must be base64 (data:image/png;base64,...)", 400)
        text = rest
    compact = "".join(text.split())
    if not compact:
        raise RequestError("the image is empty (0 bytes)", 400)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("'image' is not valid base64", 400) from None


def _text(value: Any, name: str) -> str | None:
    """A query parameter as text (TorchServe passes bytes or str)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError(f"query parameter {name!r} is not valid UTF-8", 400) from None
    if isinstance(value, list) and len(value) == 1:
        return _text(value[0], name)
    raise RequestError(f"query parameter {name!r} has an unexpected form", 400)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise RequestError(f"duplicate key {shorten(key)} in the JSON body", 400)
        out[key] = value
    return out


def _depth(obj: Any) -> int:
    """Nesting depth of a decoded JSON value (scalars 0)."""
    best, stack = 0, [(obj, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, Mapping):
            children = list(value.values())
        elif isinstance(value, list):
            children = value
        else:
            continue
        best = max(best, level)
        stack.extend((c, level + 1) for c in children)
    return best


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"a number ({shorten(value)})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _listing(known: Mapping[str, float]) -> str:
    return "known: " + (", ".join(sorted(known)) if known else "none are loaded")
