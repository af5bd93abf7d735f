"""The image checks both sides apply: Pillow decodes the whole image (the first frame) within one
pixel cap, and anything else is refused with the contract's sentence. No network code."""

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image

from handler.contract.errors import InvalidInput

MAX_PIXELS = 40_000_000  # the one pixel cap: reference images, outputs, `klein submit`
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
NOT_AN_IMAGE = "Invalid parameter: image is not a readable image"


@dataclass(frozen=True)
class VerifiedImage:
    """Image bytes Pillow has fully decoded, with what it found."""

    data: bytes
    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        """File extension ComfyUI's LoadImage will recognise."""
        return EXTENSIONS.get(self.format, self.format.lower())


@contextmanager
def decoded(
    data: bytes, max_pixels: int, formats: tuple[str, ...] | None = None
) -> Iterator[Image.Image]:
    """The image with its first frame decoded, after the pixel cap was checked on its header."""
    too_many = f"Invalid parameter: image has more than {max_pixels:,} pixels"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
        with image:
            if image.width * image.height > max_pixels:
                raise InvalidInput(too_many)
            image.load()
            yield image
    except InvalidInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(too_many) from None
    except Exception:  # a decoder fed hostile bytes can fail in any way; all mean "not an image"
        raise InvalidInput(NOT_AN_IMAGE) from None


def verify_image(data: bytes, max_pixels: int = MAX_PIXELS) -> VerifiedImage:
    """Fully decode an image with Pillow, refusing non-images and pixel bombs."""
    with decoded(data, max_pixels) as image:
        return VerifiedImage(
            data=data, format=image.format or "PNG", width=image.width, height=image.height
        )
