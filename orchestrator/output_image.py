"""The GPU's output image, made ready off the event loop: verified, stripped of ComfyUI's text
chunks (the whole graph, the prompt, the upload name), and thumbnailed when the title model is
to see a thumbnail (TITLE_IMAGE). Pure CPU work: `unpack_output` before the upload (on the event
loop for an output of usual size, `unpacks_on_loop`), `check_output` in the CPU lane while it
goes (finalize.store).

Verified means proven decodable: ComfyUI's usual output (8-bit RGB or RGBA, one frame) by
`ready_png` (every CRC, the image data inflated in full to exactly its size, ~5 ms for 1 MP),
anything else, or when a thumbnail is wanted, by Pillow's full decode (~12 ms).
"""

import base64
import binascii
import io
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pybase64
from PIL import Image

from handler.contract.errors import InvalidInput
from handler.contract.images import MAX_PIXELS, decoded
from handler.contract.ready_png import ready_png_size
from orchestrator.errors import Permanent

INVALID_OUTPUT = "RunPod returned an invalid image"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = frozenset({b"tEXt", b"zTXt", b"iTXt"})
THUMBNAIL_SIDE = 512
# An output up to this much base64 (a photo-like PNG of about 6 MP) is unpacked on the event loop:
# ~0.5 ms for 1 MP, where the CPU lane's thread hop cost 3-4 ms more, since pybase64 lets go of
# the GIL and must win it back (bench/full_path.py, 2 jobs/s). A larger one stalls the loop too
# long and goes to the lane.
UNPACK_ON_LOOP_MAX_CHARS = 16 * 1024 * 1024


@dataclass(frozen=True)
class UnpackedOutput:
    """RunPod's output as the PNG to store (ComfyUI's text chunks stripped) and its seed: what
    can be uploaded while the image is still being verified (`check_output`)."""

    png: bytes
    seed: int | None


@dataclass(frozen=True)
class CheckedImage:
    """A verified output's true size and (when asked for) the thumbnail the title model sees."""

    width: int
    height: int
    thumbnail_data_url: str | None


@dataclass(frozen=True)
class OutputImage:
    """A verified output: the PNG to store, its true size, and (when asked for) the thumbnail
    the title model sees."""

    png: bytes
    width: int
    height: int
    thumbnail_data_url: str | None
    seed: int | None


def prepare_output(output: object, *, thumbnail: bool = True) -> OutputImage:
    """From RunPod's `output` ({"image": base64 PNG, "seed": ...}) to an OutputImage."""
    unpacked = unpack_output(output)
    checked = check_output(unpacked.png, thumbnail=thumbnail)
    return OutputImage(
        unpacked.png, checked.width, checked.height, checked.thumbnail_data_url, unpacked.seed
    )


def unpack_output(output: object) -> UnpackedOutput:
    """The PNG in RunPod's `output`, decoded from base64 and stripped of its text chunks, once
    its signature and header hold (a size within the pixel cap); its pixels are not yet proven
    (`check_output`). About 1 ms for 1 MP."""
    image = output.get("image") if isinstance(output, Mapping) else None
    if not isinstance(image, str):
        raise Permanent(INVALID_OUTPUT)
    try:
        data = pybase64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise Permanent(INVALID_OUTPUT) from None
    if not data.startswith(PNG_SIGNATURE) or not _header_within_cap(data):
        raise Permanent(INVALID_OUTPUT)
    seed = output.get("seed") if isinstance(output, Mapping) else None
    return UnpackedOutput(
        png=strip_text_chunks(data),
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
    )


def unpacks_on_loop(output: object) -> bool:
    """Whether `unpack_output(output)` is quick enough for the event loop."""
    image = output.get("image") if isinstance(output, Mapping) else None
    return not isinstance(image, str) or len(image) <= UNPACK_ON_LOOP_MAX_CHARS


def check_output(png: bytes, *, thumbnail: bool) -> CheckedImage:
    """Prove the PNG decodable (Permanent if not) and give its size, with a thumbnail when
    `thumbnail` (a full decode then)."""
    if thumbnail:
        return CheckedImage(*_decode(png))
    width, height = _verify(png)
    return CheckedImage(width, height, None)


def _header_within_cap(png: bytes) -> bool:
    """IHDR comes first and names a size within the pixel cap."""
    if len(png) < 24 or png[12:16] != b"IHDR":
        return False
    width, height = struct.unpack(">II", png[16:24])
    return bool(0 < width * height <= MAX_PIXELS)


def _verify(data: bytes) -> tuple[int, int]:
    """(width, height) once the PNG is proven decodable: by ready_png when it can, else by
    Pillow, which is the judge of everything the proof does not cover."""
    if size := ready_png_size(data, MAX_PIXELS):
        return size
    try:
        with decoded(data, MAX_PIXELS, ("PNG",)) as image:
            return image.width, image.height
    except InvalidInput:
        raise Permanent(INVALID_OUTPUT) from None


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
    kept: list[bytes | memoryview] = [PNG_SIGNATURE]
    kept.extend(chunk for kind, chunk in _chunks(png) if kind not in TEXT_CHUNKS)
    return b"".join(kept)


def _chunks(png: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """(type, whole chunk) for every chunk after the signature; views, not copies of 2 MB."""
    view = memoryview(png)
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(png):
        (length,) = struct.unpack_from(">I", png, position)
        kind = png[position + 4 : position + 8]
        end = position + 12 + length
        if end > len(png):
            raise Permanent(INVALID_OUTPUT)
        yield kind, view[position:end]
        position = end
        if kind == b"IEND":
            return
