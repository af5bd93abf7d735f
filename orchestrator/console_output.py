"""`klein submit --output FILE`: the result image on disk, where it is stored, and an honest
word when it is the unedited input (the ComfyUI stand-in scales the input instead of editing)."""

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
from PIL import Image, ImageChops, ImageStat

from orchestrator.settings import Settings

DOWNLOAD_TIMEOUT_S = 30.0
UNEDITED_MEAN_DIFF = 4.0  # mean per-channel difference (0..255) below which nothing was edited
UNEDITED_NOTE = (
    "note: the result is the input image, only scaled: the ComfyUI at COMFY_API_URL is the "
    "stand-in, which does not edit; point COMFY_API_URL at a real ComfyUI for edits"
)


class ResultError(Exception):
    """The job completed but its image could not be fetched or written (exit 1)."""


@dataclass(frozen=True)
class Result:
    """A completed job's image: its bytes and, with local storage, the file it is stored in."""

    data: bytes
    local_path: Path | None


def local_file(url: str, settings: Settings) -> Path | None:
    """The stored file behind a local-storage URL (`.../storage/<bucket>/<path>`), if it exists."""
    if settings.uses_supabase_storage:
        return None
    path = unquote(urlsplit(url).path)
    if "/storage/" not in path:
        return None
    root = settings.local_storage_dir.resolve()
    candidate = (root / path.split("/storage/", 1)[1]).resolve()
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def fetch_result(url: str, settings: Settings) -> Result:
    """The image from local storage when it is there, else downloaded from its URL."""
    found = local_file(url, settings)
    if found is not None:
        return Result(found.read_bytes(), found)
    try:
        response = httpx.get(url, timeout=DOWNLOAD_TIMEOUT_S, follow_redirects=True)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise ResultError(f"cannot download the result from {url}: {exc}") from exc
    return Result(response.content, None)


def input_image(input_data: object) -> bytes | None:
    """The submitted image's bytes when it was sent inline (image_base64)."""
    if not isinstance(input_data, dict) or not isinstance(input_data.get("image_base64"), str):
        return None
    text = input_data["image_base64"].split(",", 1)[-1]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def looks_unedited(source: bytes, result: bytes) -> bool:
    """True when the result is the source scaled to the result's size (nothing was edited)."""
    try:
        with Image.open(io.BytesIO(source)) as src, Image.open(io.BytesIO(result)) as out:
            out_rgb = out.convert("RGB")
            scaled = src.convert("RGB").resize(out_rgb.size, Image.Resampling.BILINEAR)
    except (OSError, ValueError, Image.DecompressionBombError):
        return False
    difference = ImageStat.Stat(ImageChops.difference(scaled, out_rgb)).mean
    return sum(difference) / len(difference) < UNEDITED_MEAN_DIFF


def write(target: Path, data: bytes) -> Path:
    """Write the image to `target` (its folder must exist); the absolute path written."""
    try:
        target.write_bytes(data)
    except OSError as exc:
        raise ResultError(f"cannot write {target}: {exc.strerror or type(exc).__name__}") from exc
    return target.resolve()
