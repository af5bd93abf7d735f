"""The reference image: fetched under the URL policy or decoded from base64, then normalised.

Nothing reaches ComfyUI but what this module checked, within the size caps: a single-frame PNG,
upright (EXIF orientation applied). A PNG that already is one goes as it came once ready_png has
proven it intact (every CRC, the pixel stream inflated in full); any other image Pillow decodes
once, and the worker uploads its re-encoding.
"""

import binascii
import io
import re
from dataclasses import dataclass

import pybase64
from PIL import Image, ImageOps

from handler.contract import ImageBase64, ImageSource, ImageUrl
from handler.contract.errors import InvalidInput
from handler.contract.images import MAX_PIXELS, decoded
from handler.contract.ready_png import ready_png_size
from handler.image_fetch import fetch_image, too_large
from handler.url_policy import UrlPolicy

DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
# What the worker decodes (JPEG covers MPO): photo formats, never those Pillow hands to other
# programs (EPS goes to Ghostscript).
REFERENCE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every reference image."""

    max_bytes: int = 20_000_000
    max_pixels: int = MAX_PIXELS
    fetch_timeout_s: float = 30.0


@dataclass(frozen=True)
class ReferenceImage:
    """What ComfyUI receives: one upright frame as PNG, and what it came from."""

    png: bytes
    width: int
    height: int
    source_format: str


def decode_base64_image(text: str, max_bytes: int) -> bytes:
    """Decode base64 with or without a data-URI prefix, refusing anything over the byte cap."""
    payload = "".join(DATA_URI.sub("", text.strip(), count=1).split())
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise InvalidInput(too_large(max_bytes))
    payload += "=" * (-len(payload) % 4)
    try:
        data = pybase64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("Invalid parameter: image_base64 is not valid base64") from None
    if not data:
        raise InvalidInput("Invalid parameter: image_base64 is empty")
    if len(data) > max_bytes:
        raise InvalidInput(too_large(max_bytes))
    return data


def normalise_image(data: bytes, max_pixels: int) -> ReferenceImage:
    """What ComfyUI gets: one upright frame as PNG (RGBA when the image has transparency, RGB
    otherwise). A PNG proven intact and already that goes as it came; anything else is decoded
    once and re-encoded."""
    if size := ready_png_size(data, max_pixels):
        return ReferenceImage(data, size[0], size[1], "PNG")
    with decoded(data, max_pixels, REFERENCE_FORMATS) as image:
        source_format = image.format or "PNG"
        upright = ImageOps.exif_transpose(image)
        mode = "RGBA" if _has_alpha(upright) else "RGB"
        buffer = io.BytesIO()
        upright.convert(mode).save(buffer, format="PNG", compress_level=1)
        return ReferenceImage(buffer.getvalue(), upright.width, upright.height, source_format)


def _has_alpha(image: Image.Image) -> bool:
    return "A" in image.getbands() or "transparency" in image.info


def load_reference_image(
    source: ImageSource, limits: ImageLimits, policy: UrlPolicy
) -> ReferenceImage:
    """The job's reference image, normalised, from whichever source the job gave."""
    match source:
        case ImageUrl(url):
            data = fetch_image(url, policy, limits.max_bytes, limits.fetch_timeout_s)
        case ImageBase64(text):
            data = decode_base64_image(text, limits.max_bytes)
    return normalise_image(data, limits.max_pixels)
