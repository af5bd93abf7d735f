"""The fast path: a PNG that already is what ComfyUI must get goes as it came, but only when the
proof holds; anything it cannot prove takes the full decode (and is refused there if broken)."""

import io
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from handler.contract.errors import InvalidInput
from handler.contract.ready_png import SIGNATURE, ready_png_size
from handler.reference_image import normalise_image

ORIENTATION = 0x0112
CAP = 1_000_000


def encoded(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def handmade_png(width: int, height: int, raw: bytes, colour: int = 2) -> bytes:
    """A PNG around raw scanlines exactly as given (filter bytes included), CRCs correct."""
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def picture(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    image = Image.new(mode, size, (200, 30, 10, 255)[: len(mode)])
    image.paste((10, 10, 200, 255)[: len(mode)], (0, 0, 6, size[1]))  # a blue band, left edge
    return image


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_a_ready_png_goes_to_comfyui_as_it_came(mode):
    data = encoded(picture(mode))
    reference = normalise_image(data, CAP)
    assert reference.png is data
    assert (reference.width, reference.height, reference.source_format) == (40, 30, "PNG")


XMP_ROTATED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"'
    b"/></rdf:RDF></x:xmpmeta>"
)


def with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """The PNG with one more chunk right after its header."""
    at = len(SIGNATURE) + 25  # the signature, then IHDR: length, kind, 13 bytes, CRC
    return data[:at] + chunk(kind, body) + data[at:]


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + XMP_ROTATED),  # XMP: an orientation
        (b"tEXt", b"XML:com.adobe.xmp\0" + XMP_ROTATED),
        (b"tEXt", b"Raw profile type exif\0\nexif\n 40\n45786966..."),  # ImageMagick's EXIF
        (b"zTXt", b"Comment\0\0" + zlib.compress(b"x" * 100_000)),  # inflated on opening
        (b"iCCP", b"profile\0\0" + zlib.compress(b"\0" * 100_000)),  # likewise
        (b"abCD", b"an ancillary chunk nobody knows"),
        (b"ABCD", b"a critical chunk nobody knows"),
    ],
    ids=["itxt-xmp", "text-xmp", "text-raw-exif", "ztxt", "iccp", "unknown", "unknown-critical"],
)
def test_a_chunk_a_decoder_acts_on_sends_the_png_the_slow_way(kind, body):
    """What ComfyUI's decoder would turn into a rotation, work or an error is proven (or
    refused) by the full decode first: only chunks known to change nothing go as they came."""
    data = encoded(picture())
    assert ready_png_size(data, CAP) == (40, 30)
    assert ready_png_size(with_chunk(data, kind, body), CAP) is None


def test_a_plain_text_chunk_keeps_the_fast_path():
    data = with_chunk(encoded(picture()), b"tEXt", b"Software\0an image editor")
    assert ready_png_size(data, CAP) == (40, 30)


def test_xmp_orientation_is_applied_before_comfyui_sees_the_image():
    data = with_chunk(encoded(picture()), b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + XMP_ROTATED)
    reference = normalise_image(data, CAP)
    assert (reference.width, reference.height) == (30, 40)  # turned upright, as ComfyUI would


def test_a_png_with_exif_orientation_is_still_turned_upright():
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    data = encoded(picture(), exif=exif)
    assert ready_png_size(data, CAP) is None
    reference = normalise_image(data, CAP)
    image = Image.open(io.BytesIO(reference.png))
    assert image.size == (30, 40)
    red, _green, blue = image.getpixel((15, 2))  # the left band is now along the top
    assert blue > 150 > red


@pytest.mark.parametrize(
    ("data", "mode"),
    [
        (encoded(picture(), transparency=(200, 30, 10)), "RGBA"),  # an RGB transparency key
        (encoded(Image.new("I;16", (8, 8), 4000)), "RGB"),
        (encoded(Image.new("L", (8, 8), 9)), "RGB"),
        (encoded(Image.new("P", (8, 8), 0)), "RGB"),
    ],
)
def test_pngs_not_yet_rgb_or_rgba_are_converted(data, mode):
    assert ready_png_size(data, CAP) is None
    image = Image.open(io.BytesIO(normalise_image(data, CAP).png))
    assert image.mode == mode


def test_an_animated_png_is_not_passed_on():
    frames = [Image.new("RGB", (16, 16), (index * 60, 0, 0)) for index in range(3)]
    data = encoded(frames[0], save_all=True, append_images=frames[1:])
    assert ready_png_size(data, CAP) is None
    image = Image.open(io.BytesIO(normalise_image(data, CAP).png))
    assert getattr(image, "n_frames", 1) == 1


def test_a_ready_png_over_the_pixel_cap_is_refused():
    data = encoded(picture(size=(40, 30)))
    assert ready_png_size(data, 1199) is None
    with pytest.raises(InvalidInput, match="more than 1,199 pixels"):
        normalise_image(data, 1199)


def test_a_truncated_png_is_refused():
    data = encoded(Image.effect_noise((64, 64), 50).convert("RGB"))
    cut = data[: len(data) // 2]
    assert ready_png_size(cut, CAP) is None
    with pytest.raises(InvalidInput, match="not a readable image"):
        normalise_image(cut, CAP)


def test_a_flipped_byte_fails_the_crc():
    data = bytearray(encoded(Image.effect_noise((64, 64), 50).convert("RGB")))
    data[60] ^= 0xFF  # inside the first IDAT
    assert ready_png_size(bytes(data), CAP) is None


def test_a_broken_zlib_stream_with_a_valid_crc_is_not_passed_on():
    good = handmade_png(4, 2, bytes(2 * (1 + 4 * 3)))
    stream = zlib.compress(bytes(2 * (1 + 4 * 3)))
    broken = good.replace(chunk(b"IDAT", stream), chunk(b"IDAT", stream[:-5] + b"\x00" * 5))
    assert ready_png_size(good, CAP) == (4, 2)
    assert ready_png_size(broken, CAP) is None


def test_rows_with_an_unknown_filter_type_are_not_passed_on():
    row = b"\x05" + bytes(4 * 3)
    assert ready_png_size(handmade_png(4, 2, row * 2), CAP) is None
    with pytest.raises(InvalidInput, match="not a readable image"):
        normalise_image(handmade_png(4, 2, row * 2), CAP)


@pytest.mark.parametrize("extra", [1, 100_000])
def test_image_data_longer_than_the_header_says_is_not_passed_on(extra):
    """A small header over a stream that inflates further (a zlib bomb) stops at the size."""
    raw = bytes(2 * (1 + 4 * 3) + extra)
    assert ready_png_size(handmade_png(4, 2, raw), CAP) is None


def test_bytes_after_iend_are_not_passed_on():
    data = encoded(picture())
    assert ready_png_size(data + b"trailing", CAP) is None
    assert normalise_image(data + b"trailing", CAP).png != data + b"trailing"


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=255))
def test_whatever_the_fast_path_accepts_pillow_decodes_alike(position, value):
    data = bytearray(encoded(Image.effect_noise((24, 16), 80).convert("RGBA")))
    data[position % len(data)] = value
    size = ready_png_size(bytes(data), CAP)
    if size is None:
        return
    image = Image.open(io.BytesIO(bytes(data)))
    image.load()
    assert (image.size, image.mode, getattr(image, "n_frames", 1)) == (size, "RGBA", 1)


def test_image_data_split_by_another_chunk_or_a_second_header_is_not_passed_on():
    raw = bytes(2 * (1 + 4 * 3))
    stream = zlib.compress(raw)
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 8, 2, 0, 0, 0))
    split = (
        SIGNATURE
        + header
        + chunk(b"IDAT", stream[:5])
        + chunk(b"tEXt", b"k\x00v")
        + chunk(b"IDAT", stream[5:])
        + chunk(b"IEND", b"")
    )
    twice = SIGNATURE + header + header + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
    assert ready_png_size(split, CAP) is None
    assert ready_png_size(twice, CAP) is None
    together = split.replace(chunk(b"tEXt", b"k\x00v"), b"")
    assert ready_png_size(together, CAP) == (4, 2)
