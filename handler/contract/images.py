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
# A progressive JPEG's every scan walks every block of the image, however few bytes it has: a
# file of a few kB can hold thousands of scans and take minutes to decode (measured here: 10 ms a
# scan at 12 MP). Encoders write about 10 (libjpeg, Pillow, mozjpeg); 100 bounds the decode to a
# few seconds at the pixel cap.
MAX_JPEG_SCANS = 100
START_OF_SCAN = b"\xff\xda"  # never inside entropy-coded data, where 0xFF is followed by 0x00


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
    with _opened(data, max_pixels, formats) as image:
        try:
            image.load()
            yield image
        except InvalidInput:
            raise
        except Exception:  # hostile bytes can make Pillow fail in any way: all mean "not an image"
            raise InvalidInput(NOT_AN_IMAGE) from None


@contextmanager
def _opened(data: bytes, max_pixels: int, formats: tuple[str, ...] | None) -> Iterator[Image.Image]:
    """The image with only its header read, refused when it names more pixels than the cap."""
    too_many = f"Invalid parameter: image has more than {max_pixels:,} pixels"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(too_many) from None
    except Exception:
        raise InvalidInput(NOT_AN_IMAGE) from None
    with image:
        if image.width * image.height > max_pixels:
            raise InvalidInput(too_many)
        if (
            image.format in ("JPEG", "MPO")
            and (scans := data.count(START_OF_SCAN)) > MAX_JPEG_SCANS
        ):
            raise InvalidInput(
                f"Invalid parameter: image is a JPEG of {scans:,} scans; at most "
                f"{MAX_JPEG_SCANS} are accepted (save it again as a baseline JPEG or a PNG)"
            )
        yield image


def verify_image(data: bytes, max_pixels: int = MAX_PIXELS) -> VerifiedImage:
    """Fully decode an image with Pillow, refusing non-images and pixel bombs."""
    with decoded(data, max_pixels) as image:
        return VerifiedImage(
            data=data, format=image.format or "PNG", width=image.width, height=image.height
        )


def check_structure(data: bytes, max_pixels: int = MAX_PIXELS) -> VerifiedImage:
    """Check an image without decoding its pixels: the header within the pixel cap, then Pillow's
    verify (for a PNG, every chunk's CRC through IEND: a truncated or corrupted file fails). For
    files a program of ours wrote (ComfyUI's SaveImage); what a user sent gets verify_image."""
    with _opened(data, max_pixels, None) as image:
        found = VerifiedImage(data, image.format or "PNG", image.width, image.height)
        try:
            image.verify()
        except Exception:
            raise InvalidInput(NOT_AN_IMAGE) from None
        return found
