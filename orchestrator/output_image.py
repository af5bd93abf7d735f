"""The GPU's output image, made ready off the event loop: decoded once, verified, stripped of
ComfyUI's text chunks (the whole graph, the prompt, the upload name), and thumbnailed for the
title model. Pure CPU work; `flow` runs it in a thread."""

import base64
import binascii
import io
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from PIL import Image

from handler.contract.errors import InvalidInput
from handler.contract.images import MAX_PIXELS, decoded
from orchestrator.errors import Permanent

INVALID_OUTPUT = "RunPod returned an invalid image"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
THUMBNAIL_SIDE = 512
B64_SLICE_CHARS = 256 * 1024  # a multiple of 4


@dataclass(frozen=True)
class OutputImage:
    """A verified output: the PNG to store, its true size, and what the title model sees."""

    png: bytes
    width: int
    height: int
    thumbnail_data_url: str
    seed: int | None


def prepare_output(output: object) -> OutputImage:
    """From RunPod's `output` ({"image": base64 PNG, "seed": ...}) to an OutputImage."""
    image = output.get("image") if isinstance(output, Mapping) else None
    if not isinstance(image, str):
        raise Permanent(INVALID_OUTPUT)
    try:
        data = _b64decode(image)
    except (binascii.Error, ValueError):
        raise Permanent(INVALID_OUTPUT) from None
    if not data.startswith(PNG_SIGNATURE):
        raise Permanent(INVALID_OUTPUT)
    width, height, thumbnail = _decode(data)
    seed = output.get("seed") if isinstance(output, Mapping) else None
    return OutputImage(
        png=strip_text_chunks(data),
        width=width,
        height=height,
        thumbnail_data_url=thumbnail,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )


def _b64decode(text: str) -> bytes:
    """base64 in slices: one call on a whole output holds the GIL (and so the event loop's
    thread) for ~13 ms per 2 MP image; slices let the loop run in between."""
    if len(text) % 4:
        raise ValueError("base64 length is not a multiple of 4")
    return b"".join(
        base64.b64decode(text[start : start + B64_SLICE_CHARS], validate=True)
        for start in range(0, len(text), B64_SLICE_CHARS)
    )


def _decode(data: bytes) -> tuple[int, int, str]:
    """Decode the whole image once (the contract's check and pixel cap) and thumbnail it."""
    try:
        with decoded(data, MAX_PIXELS, ("PNG",)) as image:
            return image.width, image.height, _thumbnail_data_url(image)
    except InvalidInput:
        raise Permanent(INVALID_OUTPUT) from None


def _thumbnail_data_url(image: Image.Image) -> str:
    """A small JPEG data URL: the model sees the image without needing a public URL.

    Box-averaged by a whole factor (`reduce`, ~1 ms for 1 MP), not resampled to exactly
    THUMBNAIL_SIDE (Lanczos, ~10 ms): a title needs no finer thumbnail."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    factor = math.ceil(max(rgb.size) / THUMBNAIL_SIDE)
    small = rgb.reduce(factor) if factor > 1 else rgb
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def strip_text_chunks(png: bytes) -> bytes:
    """The same PNG without tEXt/zTXt/iTXt chunks; pixels and other chunks byte for byte."""
    kept = [PNG_SIGNATURE]
    kept.extend(chunk for kind, chunk in _chunks(png) if kind not in TEXT_CHUNKS)
    return b"".join(kept)


def _chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) for every chunk after the signature."""
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(png):
        (length,) = struct.unpack(">I", png[position : position + 4])
        kind = png[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(png):
            raise Permanent(INVALID_OUTPUT)
        yield kind, png[position:end]
        position = end
        if kind == b"IEND":
            return
