"""Image bytes for the input tests: encodings, random RGB images, PNG chunks and PNG bombs."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    """``img`` saved in ``fmt`` (Pillow options in ``kwargs``), as bytes."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def rgb(seed: int, size: tuple[int, int] = (40, 40)) -> Image.Image:
    """A random RGB image of ``size`` (width, height)."""
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def big_png(width: int, height: int, depth: int = 8) -> bytes:
    """A valid all-black grayscale PNG of ``width`` x ``height``, written row by row (small on
    the wire, huge when decoded)."""
    row = b"\0" * (1 + (width * depth + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row * min(256, height - i)) for i in range(0, height, 256)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", b"".join(parts))
        + png_chunk(b"IEND", b"")
    )
