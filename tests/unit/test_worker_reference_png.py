"""What ComfyUI receives: the reference decoded once, frame 0 only, upright, as a PNG."""

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from handler.contract.images import verify_image
from handler.errors import InvalidInput
from handler.reference_image import normalise_image

ORIENTATION = 0x0112


def encoded(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def animated_gif(size: tuple[int, int], frames: int) -> bytes:
    pictures = [Image.new("RGB", size, (index * 5 % 256, 0, 0)) for index in range(frames)]
    return encoded(pictures[0], "GIF", save_all=True, append_images=pictures[1:])


def opened(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_an_animated_gif_becomes_one_png_frame():
    """The animated bomb: every frame under the cap passed, and ComfyUI's LoadImage stacked them
    all as float32. Only frame 0 may reach ComfyUI."""
    data = animated_gif((300, 200), frames=40)
    assert Image.open(io.BytesIO(data)).n_frames == 40
    reference = normalise_image(data, max_pixels=300 * 200)
    image = opened(reference.png)
    assert (image.format, getattr(image, "n_frames", 1), image.size) == ("PNG", 1, (300, 200))
    assert reference.source_format == "GIF"


def test_an_animated_png_becomes_one_frame():
    frames = [Image.new("RGB", (32, 16), (index * 40, 0, 0)) for index in range(4)]
    data = encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    image = opened(normalise_image(data, max_pixels=10_000).png)
    assert getattr(image, "n_frames", 1) == 1
    assert image.getpixel((0, 0)) == (0, 0, 0)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # the camera was turned: display rotated 90 degrees clockwise
    picture = Image.new("RGB", (64, 48), (200, 10, 10))
    picture.paste((10, 10, 200), (0, 0, 8, 48))  # a blue band on the left edge
    data = encoded(picture, "JPEG", exif=exif, quality=95)
    reference = normalise_image(data, max_pixels=10_000)
    image = opened(reference.png)
    assert (reference.width, reference.height) == image.size == (48, 64)
    red, _green, blue = image.getpixel((24, 2))  # the left band is now along the top
    assert blue > 150 > red
    assert ORIENTATION not in image.getexif()


@pytest.mark.parametrize(
    ("picture", "mode"),
    [
        (Image.new("RGBA", (8, 8), (1, 2, 3, 4)), "RGBA"),
        (Image.new("LA", (8, 8), (9, 100)), "RGBA"),
        (Image.new("L", (8, 8), 9), "RGB"),
        (Image.new("I;16", (8, 8), 4000), "RGB"),
        (Image.new("CMYK", (8, 8), (1, 2, 3, 4)), "RGB"),
    ],
)
def test_the_png_is_rgb_or_rgba(picture, mode):
    image_format = "TIFF" if picture.mode == "CMYK" else "PNG"
    image = opened(normalise_image(encoded(picture, image_format), max_pixels=100).png)
    assert image.mode == mode


def test_a_palette_image_with_transparency_keeps_it():
    picture = Image.new("P", (8, 8), 0)
    data = encoded(picture, "PNG", transparency=0)
    assert opened(normalise_image(data, max_pixels=100).png).mode == "RGBA"


def test_formats_pillow_hands_to_other_programs_are_refused():
    data = encoded(Image.new("RGB", (8, 8)), "PPM")
    assert verify_image(data, max_pixels=100).format == "PPM"  # the orchestrator's check
    with pytest.raises(InvalidInput, match="not a readable image"):
        normalise_image(data, max_pixels=100)
    with pytest.raises(InvalidInput, match="not a readable image"):
        normalise_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", max_pixels=100)


def test_the_pixel_cap_applies_before_decoding():
    with pytest.raises(InvalidInput, match="more than 1,000 pixels"):
        normalise_image(encoded(Image.new("RGB", (40, 30)), "PNG"), max_pixels=1000)


@given(st.binary(max_size=300))
def test_any_bytes_give_a_png_or_a_clear_sentence(data):
    try:
        reference = normalise_image(data, max_pixels=10_000)
    except InvalidInput as exc:
        message = str(exc)
    else:
        assert opened(reference.png).format == "PNG"
        return
    assert message.startswith("Invalid parameter: image ")
