"""Reference images: the address guard, base64 forms, and the byte and pixel caps."""

import base64
import io
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from handler.contract.images import verify_image
from handler.errors import InvalidInput
from handler.reference_image import decode_base64_image
from handler.url_policy import UrlPolicy, is_forbidden_address


def png_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.5",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "ff02::1",
    ],
)
def test_private_local_and_multicast_addresses_are_forbidden(address):
    assert is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address):
    assert not is_forbidden_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "resolved",
    [["127.0.0.1"], ["169.254.169.254"], ["93.184.216.34", "10.0.0.1"], ["fe80::1%eth0"]],
)
def test_a_url_resolving_to_a_forbidden_address_is_refused(resolved):
    with pytest.raises(InvalidInput, match="private or local address"):
        UrlPolicy(resolve=lambda host: resolved).vet("http://images.example.com/a.png")


def test_literal_metadata_address_is_refused_with_the_real_resolver():
    with pytest.raises(InvalidInput, match="private or local address"):
        UrlPolicy().vet("http://169.254.169.254/latest/meta-data/")
    with pytest.raises(InvalidInput, match="private or local address"):
        UrlPolicy().vet("http://127.0.0.1:8188/view")


def test_a_public_url_passes_the_guard():
    policy = UrlPolicy(resolve=lambda host: ["93.184.216.34"])
    target, addresses = policy.vet("https://cdn.example.com/a.png")
    assert (target.host, target.port, addresses) == (
        "cdn.example.com",
        443,
        [ipaddress.ip_address("93.184.216.34")],
    )


@pytest.mark.parametrize(
    "wrap",
    [
        lambda b64: b64,
        lambda b64: "data:image/png;base64," + b64,
        lambda b64: "DATA:IMAGE/PNG;BASE64," + b64,
        lambda b64: b64.rstrip("="),
        lambda b64: "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76)),
        lambda b64: "  " + b64 + "\n",
    ],
)
def test_base64_forms_decode_to_the_same_bytes(wrap):
    data = png_bytes()
    assert decode_base64_image(wrap(base64.b64encode(data).decode()), max_bytes=10**6) == data


@pytest.mark.parametrize("text", ["!!!!", "data:image/png;base64,@@@", "abc$", "="])
def test_invalid_base64_is_a_clear_error(text):
    with pytest.raises(InvalidInput, match="image_base64"):
        decode_base64_image(text, max_bytes=10**6)


def test_base64_over_the_byte_cap_is_refused_before_decoding():
    text = base64.b64encode(b"x" * 5000).decode()
    with pytest.raises(InvalidInput, match="larger than"):
        decode_base64_image(text, max_bytes=1000)


@given(st.text(max_size=200))
def test_any_text_decodes_or_gives_a_clear_error(text):
    try:
        decode_base64_image(text, max_bytes=10**6)
    except InvalidInput as exc:
        message = str(exc)
    else:
        return
    assert message.startswith("Invalid parameter: image_base64 ")


def test_verify_reads_format_and_size():
    image = verify_image(png_bytes((640, 480)), max_pixels=10**7)
    assert (image.format, image.width, image.height, image.extension) == ("PNG", 640, 480, "png")


def test_jpeg_gets_a_jpg_extension():
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buffer, format="JPEG")
    assert verify_image(buffer.getvalue(), max_pixels=1000).extension == "jpg"


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", png_bytes()[:60], b"\x89PNG\r\n\x1a\n" + b"\0" * 50]
)
def test_non_images_and_truncated_images_are_refused(data):
    with pytest.raises(InvalidInput, match="not a readable image"):
        verify_image(data, max_pixels=10**7)


def test_too_many_pixels_is_refused():
    with pytest.raises(InvalidInput, match="more than 1,000 pixels"):
        verify_image(png_bytes((40, 30)), max_pixels=1000)


def test_a_decompression_bomb_is_refused_without_decoding():
    # A 1-bit PNG claiming 20000x20000 pixels compresses to a few kilobytes.
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, format="PNG")
    with pytest.raises(InvalidInput, match="pixels"):
        verify_image(buffer.getvalue(), max_pixels=40_000_000)


def progressive_jpeg(extra_scans: int, size=(1200, 900)) -> bytes:
    """A progressive JPEG (Pillow writes 10 scans) with its last scan repeated `extra_scans`
    times: a few bytes each, every one a walk over every block of the image."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (40, 90, 200)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    last_scan = data[data.rfind(b"\xff\xda") : -2]
    return data[:-2] + last_scan * extra_scans + b"\xff\xd9"


def test_a_progressive_jpeg_of_ordinary_scans_is_decoded():
    found = verify_image(progressive_jpeg(extra_scans=80))
    assert (found.format, found.width, found.height) == ("JPEG", 1200, 900)


def test_a_jpeg_of_too_many_scans_is_refused_before_decoding():
    with pytest.raises(InvalidInput, match=r"JPEG of 1,010 scans; at most 100 are accepted"):
        verify_image(progressive_jpeg(extra_scans=1000))
