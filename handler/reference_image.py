"""The reference image: fetched from a guarded URL or decoded from base64, then verified.

Nothing reaches ComfyUI before Pillow has read the whole image within the size caps.
"""

import base64
import binascii
import io
import ipaddress
import re
import socket
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image, UnidentifiedImageError

from handler.contract import ImageBase64, ImageSource, ImageUrl, is_http_url
from handler.errors import ImageFetchError, InvalidInput

MAX_REDIRECTS = 3
CHUNK_BYTES = 64 * 1024
DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
EXTENSIONS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}

Resolver = Callable[[str], Iterable[str]]
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ImageLimits:
    """Caps applied to every reference image."""

    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    fetch_timeout_s: float = 30.0
    allow_private_urls: bool = False


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


def is_forbidden_address(address: IpAddress) -> bool:
    """True for addresses a fetch must never reach: private, loopback, link-local, multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def system_resolver(host: str) -> list[str]:
    """Every address the system resolver gives for a host."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageFetchError(f"Could not fetch image_url: cannot resolve host {host}") from exc
    return [str(info[4][0]) for info in infos]


def check_url_target(url: str, resolve: Resolver = system_resolver) -> None:
    """Refuse a URL whose host is, or resolves to, a private or local address."""
    host = urlsplit(url).hostname or ""
    for text in resolve(host):
        address = ipaddress.ip_address(text.split("%", 1)[0])
        if is_forbidden_address(address):
            raise InvalidInput("Invalid parameter: image_url points to a private or local address")


def fetch_image(
    url: str,
    session: requests.Session,
    limits: ImageLimits,
    resolve: Resolver = system_resolver,
) -> bytes:
    """Download a URL within the byte cap and deadline, re-checking every redirect hop."""
    deadline = time.monotonic() + limits.fetch_timeout_s
    for _hop in range(MAX_REDIRECTS + 1):
        if not limits.allow_private_urls:
            check_url_target(url, resolve)
        response = _get(session, url, limits)
        with response:
            if response.is_redirect:
                url = _next_hop(url, response.headers.get("location", ""))
                continue
            if response.status_code != 200:
                raise ImageFetchError(f"Could not fetch image_url: HTTP {response.status_code}")
            return _read_capped(response, limits.max_bytes, deadline)
    raise ImageFetchError(f"Could not fetch image_url: more than {MAX_REDIRECTS} redirects")


def _get(session: requests.Session, url: str, limits: ImageLimits) -> requests.Response:
    timeout = (min(10.0, limits.fetch_timeout_s), limits.fetch_timeout_s)
    try:
        return session.get(url, stream=True, timeout=timeout, allow_redirects=False)
    except requests.Timeout as exc:
        raise ImageFetchError("Could not fetch image_url: timed out") from exc
    except requests.RequestException as exc:
        host = urlsplit(url).hostname
        raise ImageFetchError(f"Could not fetch image_url: cannot connect to {host}") from exc


def _next_hop(url: str, location: str) -> str:
    target = urljoin(url, location)
    if not is_http_url(target):
        raise InvalidInput("Invalid parameter: image_url redirected to a non-http(s) URL")
    return target


def _read_capped(response: requests.Response, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise InvalidInput(_too_large(max_bytes))
    body = bytearray()
    try:
        for chunk in response.iter_content(CHUNK_BYTES):
            body.extend(chunk)
            if len(body) > max_bytes:
                raise InvalidInput(_too_large(max_bytes))
            if time.monotonic() > deadline:
                raise ImageFetchError("Could not fetch image_url: download timed out")
    except requests.RequestException as exc:
        raise ImageFetchError("Could not fetch image_url: connection broke off") from exc
    return bytes(body)


def _too_large(max_bytes: int) -> str:
    return f"Invalid parameter: image is larger than {max_bytes // 1_000_000} MB"


def decode_base64_image(text: str, max_bytes: int) -> bytes:
    """Decode base64 with or without a data-URI prefix, refusing anything over the byte cap."""
    payload = "".join(DATA_URI.sub("", text.strip(), count=1).split())
    if len(payload) > (max_bytes * 4) // 3 + 4:
        raise InvalidInput(_too_large(max_bytes))
    payload += "=" * (-len(payload) % 4)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("Invalid parameter: image_base64 is not valid base64") from None
    if not data:
        raise InvalidInput("Invalid parameter: image_base64 is empty")
    if len(data) > max_bytes:
        raise InvalidInput(_too_large(max_bytes))
    return data


def verify_image(data: bytes, max_pixels: int) -> VerifiedImage:
    """Fully decode an image with Pillow, refusing non-images and pixel bombs."""
    too_many = f"Invalid parameter: image has more than {max_pixels:,} pixels"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidInput(too_many)
            image_format = image.format or "PNG"
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(too_many) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InvalidInput("Invalid parameter: image is not a readable image") from None
    return VerifiedImage(data=data, format=image_format, width=width, height=height)


def load_reference_image(
    source: ImageSource,
    session: requests.Session,
    limits: ImageLimits,
    resolve: Resolver = system_resolver,
) -> VerifiedImage:
    """The job's reference image, verified, from whichever source the job gave."""
    match source:
        case ImageUrl(url):
            data = fetch_image(url, session, limits, resolve)
        case ImageBase64(text):
            data = decode_base64_image(text, limits.max_bytes)
    return verify_image(data, limits.max_pixels)
