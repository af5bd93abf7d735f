"""The job contract both sides apply: the input rules, defaults, ranges and error sentences
(README.md, "Contract"), with the image checks in `handler.contract.images` and the errors in
`handler.contract.errors`. No network code: the orchestrator imports this package and nothing
else of the worker, and validates with the same rules before spending GPU time.
"""

import json
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from handler.contract.errors import InvalidInput

PROMPT_MAX_CHARS = 2000
SEED_MAX = 2**64 - 1  # RandomNoise.noise_seed max in object_info
RANDOM_SEED_MAX = 2**53 - 1  # drawn seeds stay exact in JSON numbers and JavaScript
DEFAULT_STEPS = 4
DEFAULT_CFG = 1.0
DEFAULT_MEGAPIXELS = 1.0
STEPS_MIN, STEPS_MAX = 1, 40
CFG_MIN, CFG_MAX = 0, 20
MEGAPIXELS_MIN, MEGAPIXELS_MAX = 0.5, 2.0
RANGES: dict[str, tuple[float, float]] = {
    "steps": (STEPS_MIN, STEPS_MAX),
    "cfg": (CFG_MIN, CFG_MAX),
    "megapixels": (MEGAPIXELS_MIN, MEGAPIXELS_MAX),
}
KNOWN_FIELDS = frozenset(
    {"prompt", "image_url", "image_base64", "seed", "steps", "cfg", "megapixels"}
)

# RunPod refuses a /run body over 10 MB (HTTP 413). The reserve covers everything but the image:
# the prompt (2,000 characters, up to 6 bytes each once escaped), its translation, numbers, webhook.
RUNPOD_RUN_MAX_BYTES = 10_000_000
RUN_BODY_RESERVE_BYTES = 100_000
IMAGE_BASE64_MAX_CHARS = RUNPOD_RUN_MAX_BYTES - RUN_BODY_RESERVE_BYTES
IMAGE_URL_MAX_CHARS = 8192
BASE64_ALPHABET = (string.ascii_letters + string.digits + "+/=").encode("ascii")
# Characters that parsers disagree about (a backslash ends the host for some, not for others).
AMBIGUOUS_URL_CHARS = frozenset("\\") | frozenset(chr(code) for code in range(0x21)) | {"\x7f"}

MISSING_IMAGE = "Missing required parameter: image"
MISSING_PROMPT = "Missing required parameter: prompt"


@dataclass(frozen=True)
class ImageUrl:
    """A reference image to download."""

    url: str


@dataclass(frozen=True)
class ImageBase64:
    """A reference image sent inline (base64, data-URI prefix allowed)."""

    data: str


ImageSource = ImageUrl | ImageBase64


@dataclass(frozen=True)
class JobParams:
    """A validated job: every value within range, the seed already drawn."""

    prompt: str
    image: ImageSource
    seed: int
    steps: int
    cfg: float
    megapixels: float
    seed_was_random: bool = False


class JobInput(BaseModel):
    """The raw input as JSON gives it; numbers may arrive as numeric strings, never as booleans."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str | None = None
    image_url: str | None = None
    image_base64: str | None = None
    seed: int | None = Field(None, le=SEED_MAX)
    steps: int = Field(DEFAULT_STEPS, ge=STEPS_MIN, le=STEPS_MAX)
    cfg: float = Field(DEFAULT_CFG, ge=CFG_MIN, le=CFG_MAX, allow_inf_nan=False)
    megapixels: float = Field(
        DEFAULT_MEGAPIXELS, ge=MEGAPIXELS_MIN, le=MEGAPIXELS_MAX, allow_inf_nan=False
    )

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data

    @field_validator("seed", "steps", "cfg", "megapixels", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("boolean")  # reported as a wrong type by _error_sentence
        return value


def _error_sentence(error: ErrorDetails) -> str:
    field = str(error["loc"][0]) if error["loc"] else "input"
    kind = error["type"]
    if field in RANGES and kind in {"greater_than_equal", "less_than_equal"}:
        low, high = RANGES[field]
        return f"Invalid parameter: {field} must be between {low} and {high}"
    if field == "seed" and kind == "less_than_equal":
        return f"Invalid parameter: seed must be at most {SEED_MAX}"
    if field in {"prompt", "image_url", "image_base64"}:
        return f"Invalid parameter: {field} must be a string"
    if kind == "finite_number":
        return f"Invalid parameter: {field} must be a finite number"
    if field in {"seed", "steps"}:
        return f"Invalid parameter: {field} must be an integer"
    return f"Invalid parameter: {field} must be a number"


def random_seed() -> int:
    """Draw a fresh seed for a job that asked for a random one."""
    return secrets.randbelow(RANDOM_SEED_MAX) + 1


def unknown_fields(raw: Mapping[str, Any]) -> list[str]:
    """Fields the contract ignores (logged by the caller, never fatal)."""
    return sorted(str(key) for key in raw if key not in KNOWN_FIELDS)


def parse_input(raw: object, *, draw_seed: Callable[[], int] = random_seed) -> JobParams:
    """Validate a job's input, apply defaults and draw the seed; raise InvalidInput otherwise."""
    if not isinstance(raw, Mapping):
        raise InvalidInput("Invalid input: expected a JSON object")
    try:
        job = JobInput.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(_error_sentence(exc.errors()[0])) from None
    image = _image_source(job)
    prompt = (job.prompt or "").strip()
    if not prompt:
        raise InvalidInput(MISSING_PROMPT)
    if len(prompt) > PROMPT_MAX_CHARS:
        raise InvalidInput(
            f"Invalid parameter: prompt must be at most {PROMPT_MAX_CHARS} characters"
        )
    random = job.seed is None or job.seed <= 0
    return JobParams(
        prompt=prompt,
        image=image,
        seed=draw_seed() if random or job.seed is None else job.seed,
        steps=job.steps,
        cfg=job.cfg,
        megapixels=job.megapixels,
        seed_was_random=random,
    )


def _image_source(job: JobInput) -> ImageSource:
    url = (job.image_url or "").strip()
    if url:
        if problem := image_url_problem(url):
            raise InvalidInput(f"Invalid parameter: image_url {problem}")
        return ImageUrl(url)
    data = (job.image_base64 or "").strip()
    if data:
        if _json_size(data) > IMAGE_BASE64_MAX_CHARS:
            raise InvalidInput(base64_too_large())
        return ImageBase64(data)
    raise InvalidInput(MISSING_IMAGE)


def base64_too_large() -> str:
    """The sentence for an inline image that would push the /run body over RunPod's limit."""
    megabytes = IMAGE_BASE64_MAX_CHARS * 3 // 4 / 1_000_000
    return (
        "Invalid parameter: image_base64 is too large to send through RunPod "
        f"(over {megabytes:.1f} MB); send a smaller image or an image_url"
    )


def _json_size(text: str) -> int:
    if text.isascii() and not text.encode("ascii").translate(None, BASE64_ALPHABET):
        return len(text)  # base64 alone, which JSON never escapes: no megabyte-long dumps
    return len(json.dumps(text)) - 2


def image_url_problem(url: str) -> str | None:
    """Why a URL cannot be fetched safely ("must ..."), or None; forms parsers read differently
    (a user name, a backslash, spaces or control characters) are refused outright."""
    if len(url) > IMAGE_URL_MAX_CHARS:
        return f"must be at most {IMAGE_URL_MAX_CHARS} characters"
    if not is_http_url(url):
        return "must be an http(s) URL"
    if any(char in AMBIGUOUS_URL_CHARS for char in url):
        return "must not contain backslashes, spaces or control characters"
    if "@" in urlsplit(url).netloc:
        return "must not contain a user name or password"
    return None


def is_http_url(url: str) -> bool:
    """True for an absolute http(s) URL with a host (and a valid port, if it names one)."""
    try:
        parts = urlsplit(url)
        _port = parts.port  # raises for a port out of range or not a number
    except ValueError:
        return False
    return parts.scheme in {"http", "https"} and bool(parts.hostname)
