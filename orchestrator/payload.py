"""Building what RunPod receives, and the metadata recorded with it. Pure.

The rules are the worker's own (handler.contract), applied here first so that bad input fails
the work at once, without GPU time.
"""

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from handler.contract import ImageBase64, ImageUrl, JobParams, parse_input, random_seed
from handler.contract.errors import InvalidInput

MODEL_NAME = "XiCON_KLEIN_I2I"


@dataclass(frozen=True)
class Submission:
    """The RunPod input and the generation_metadata written with it."""

    input: dict[str, Any]
    metadata: dict[str, Any]


def validate(
    input_data: object,
    user_id: str | None,
    work_id: str,
    draw_seed: Callable[[], int] = random_seed,
) -> JobParams:
    """The job's parameters, or InvalidInput with the sentence the work fails with."""
    for name, value in (("user_id", user_id), ("work_id", work_id)):
        if not _is_uuid(value):
            raise InvalidInput(f"Invalid parameter: {name} must be a UUID")
    return parse_input(input_data, draw_seed=draw_seed)


def _is_uuid(value: object) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return value is not None


def build_submission(
    params: JobParams,
    prompt_sent: str,
    translation: str,
    submitted_at: datetime,
) -> Submission:
    """RunPod's input (the translated prompt, the drawn seed) and the seed's metadata keys."""
    job_input: dict[str, Any] = {
        "prompt": prompt_sent,
        "seed": params.seed,
        "steps": params.steps,
        "cfg": params.cfg,
        "megapixels": params.megapixels,
    }
    match params.image:
        case ImageUrl(url):
            job_input["image_url"] = url
        case ImageBase64(data):
            job_input["image_base64"] = data
    metadata = {
        "prompt": prompt_sent,
        "original_prompt": params.prompt,
        "model": MODEL_NAME,
        "width": None,
        "height": None,
        "seed": params.seed,
        "steps": params.steps,
        "cfg": params.cfg,
        "megapixels": params.megapixels,
        "has_image_input": True,
        "submitted_at": submitted_at.isoformat().replace("+00:00", "Z"),
        "translation": translation,
    }
    return Submission(input=job_input, metadata=metadata)
