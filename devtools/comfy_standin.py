"""A ComfyUI v0.33.0 stand-in: its protocol (the routes, shapes and messages recorded in
comfy_recordings/api_transcript.json) without a GPU, for running the handler on one machine
during development.

Nodes are not computed, except LoadImage, ImageScaleToTotalPixels, ImageInvert, SaveImage and
PreviewImage; every other node passes its first image input through, so a diffusion graph saves
the scaled reference image. `klein comfy-standin --port 8188 --root DIR` (or
`python -m devtools.comfy_standin`) runs it in the foreground. `behaviour` ("fail", "stall",
"drop_socket", "slow_history") is a development hook that plays ComfyUI's failures on purpose.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import copy
import hashlib
import json
import logging
import math
import mimetypes
import os
import random
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from aiohttp import web
from PIL import Image, ImageOps
from PIL.PngImagePlugin import PngInfo

from devtools.background_server import BackgroundServer

log = logging.getLogger(__name__)

# What a real ComfyUI v0.33.0 answered (node types, a recorded session), kept with the tests.
DATA_DIR = Path(__file__).resolve().parent / "comfy_recordings"  # package data
BEHAVIOURS = ("success", "fail", "stall", "drop_socket", "slow_history")
SAMPLER_CLASSES = frozenset(
    {"SamplerCustomAdvanced", "SamplerCustom", "KSampler", "KSamplerAdvanced"}
)
# The model files the Klein graph names, listed by the loaders when `models_installed`.
INSTALLED_MODELS: dict[tuple[str, str], list[str]] = {
    ("UNETLoader", "unet_name"): ["flux-2-klein-9b-fp8.safetensors"],
    ("CLIPLoader", "clip_name"): ["qwen_3_8b_fp8mixed.safetensors"],
    ("VAELoader", "vae_name"): ["flux2-vae.safetensors"],
}
SLOW_HISTORY_EMPTY_READS = 2
INDEX_HTML = "<!DOCTYPE html><html><head><title>ComfyUI</title></head><body></body></html>\n"
FAIL_EXCEPTION_TYPE = "torch.OutOfMemoryError"
FAIL_EXCEPTION_MESSAGE = (
    "Allocation on device \nThis error means you ran out of memory on your GPU.\n\n"
    "TIPS: If the workflow worked before you might have accidentally set the batch_size to a "
    "large number.\n"
)
_FAIL_TRACEBACK = [
    '  File "/opt/ComfyUI/execution.py", line 545, in execute\n    output_data, output_ui, '
    "has_subgraph, has_pending_tasks = await get_output_data(prompt_id, unique_id, obj, "
    "input_data_all)\n",
    '  File "/opt/ComfyUI/execution.py", line 306, in process_inputs\n    result = f(**inputs)\n',
    '  File "/opt/ComfyUI/comfy/model_management.py", line 1190, in cast_to\n'
    "    r = torch.empty_like(weight, dtype=dtype, device=device)\n",
]
_SERVER_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"
_UPSCALE_FILTERS = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


# --------------------------------------------------------------------------- reference data


@cache
def load_object_info() -> dict[str, Any]:
    """The recorded `/object_info` of the real server (shared: never mutate it)."""
    info: dict[str, Any] = json.loads((DATA_DIR / "object_info.json").read_text())
    return info


@cache
def load_transcript() -> dict[str, Any]:
    """The recorded API transcript (shared: never mutate it)."""
    data: dict[str, Any] = json.loads((DATA_DIR / "api_transcript.json").read_text())
    return data


def system_stats() -> dict[str, Any]:
    """The `/system_stats` body the real server answered."""
    calls = load_transcript()["calls"]
    body: dict[str, Any] = next(c for c in calls if c["path"] == "/system_stats")["response"]
    return body


def object_info_view(
    info: dict[str, Any], *, models_installed: bool, input_files: list[str]
) -> dict[str, Any]:
    """`info` with LoadImage listing `input_files` and, when installed, the Klein model files."""
    view = dict(info)
    load_image = copy.deepcopy(info["LoadImage"])
    load_image["input"]["required"]["image"][0] = input_files
    view["LoadImage"] = load_image
    if models_installed:
        for (class_type, name), files in INSTALLED_MODELS.items():
            entry = copy.deepcopy(info[class_type])
            spec = entry["input"]["required"][name]
            spec[0] = files + [f for f in spec[0] if f not in files]
            view[class_type] = entry
    return view


# --------------------------------------------------------------------------- validation


class Validation(NamedTuple):
    """What ComfyUI's validate_prompt returns: ok, error, outputs to execute, node errors."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


def _error(
    kind: str, message: str, details: str = "", extra_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra_info or {}}


def full_type_name(klass: type) -> str:
    """The exception type name as ComfyUI reports it (`module.Name`, builtins bare)."""
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def is_link(value: object) -> bool:
    """True for a `[node_id, output_index]` input."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], (int, float))
        and not isinstance(value[1], bool)
    )


def input_specs(spec: dict[str, Any]) -> Iterator[tuple[str, str, Any, dict[str, Any]]]:
    """(name, category, type, options) of a node's required then optional inputs."""
    inputs = spec.get("input", {})
    order = spec.get("input_order", {})
    for category in ("required", "optional"):
        group = inputs.get(category, {})
        for name in order.get(category, list(group)):
            entry = group[name]
            yield name, category, entry[0], entry[1] if len(entry) > 1 else {}


def types_match(received: Any, wanted: Any) -> bool:
    """ComfyUI's link type check: equal, a wildcard, or overlapping comma-separated sets."""
    if received == wanted:
        return True
    if not isinstance(received, str) or not isinstance(wanted, str):
        return False
    if "*" in (received, wanted):
        return True
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in wanted.split(",")})


def find_outputs(
    prompt: dict[str, Any], info: dict[str, Any]
) -> tuple[list[str], dict[str, Any] | None]:
    """The output node ids, or the error for a node without a known class_type."""
    outputs = []
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            message = "Cannot execute because a node is missing the class_type property."
            return [], _error("invalid_prompt", message, f"Node ID '#{node_id}'")
        class_type = node["class_type"]
        if not isinstance(class_type, str) or class_type not in info:
            title = (node.get("_meta") or {}).get("title", class_type)
            message = f"Node '{class_type}' not found. The custom node may not be installed."
            extra = {"node_id": node_id, "class_type": class_type, "node_title": title}
            return [], _error("missing_node_type", message, f"Node ID '#{node_id}'", extra)
        if info[class_type].get("output_node") is True:
            outputs.append(node_id)
    return outputs, None


def _convert(value: Any, input_type: Any) -> Any:
    converters: dict[str, Callable[[Any], Any]] = {
        "INT": int,
        "FLOAT": float,
        "STRING": str,
        "BOOLEAN": bool,
    }
    convert = converters.get(input_type) if isinstance(input_type, str) else None
    return convert(value) if convert is not None else value


def _range_or_list_error(
    name: str, value: Any, input_type: Any, extra: dict[str, Any]
) -> dict[str, Any] | None:
    config = [input_type, extra]
    if "min" in extra and value < extra["min"]:
        message = f"Value {value} smaller than min of {extra['min']}"
        return _error(
            "value_smaller_than_min",
            message,
            name,
            {"input_name": name, "input_config": config, "received_value": value},
        )
    if "max" in extra and value > extra["max"]:
        message = f"Value {value} bigger than max of {extra['max']}"
        return _error(
            "value_bigger_than_max",
            message,
            name,
            {"input_name": name, "input_config": config, "received_value": value},
        )
    if not (isinstance(input_type, list) or input_type == "COMBO"):
        return None
    options = extra.get("options", []) if input_type == "COMBO" else input_type
    multiselect = extra.get("multiselect", False) and isinstance(value, list)
    if all(v in options for v in value) if multiselect else value in options:
        return None
    list_info = str(options)
    shown_config: list[Any] | None = config
    if len(options) > 20:  # ComfyUI does not send back long model lists
        list_info, shown_config = f"(list of length {len(options)})", None
    return _error(
        "value_not_in_list",
        "Value not in list",
        f"{name}: '{value}' not in {list_info}",
        {"input_name": name, "input_config": shown_config, "received_value": value},
    )


class _Validator:
    """ComfyUI's recursive validate_inputs over one prompt, results memoised in `validated`."""

    def __init__(
        self, prompt: dict[str, Any], info: dict[str, Any], image_exists: Callable[[str], bool]
    ) -> None:
        self.prompt = prompt
        self.info = info
        self.image_exists = image_exists
        self.validated: dict[str, tuple[bool, list[dict[str, Any]]]] = {}

    def validate_output(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        try:
            return self.validate(node_id)
        except Exception as exc:
            extra = {
                "exception_type": full_type_name(type(exc)),
                "traceback": traceback.format_tb(exc.__traceback__),
            }
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(exc),
                    extra,
                )
            ]
            self.validated[node_id] = (False, reasons)
            return False, reasons

    def validate(self, node_id: str) -> tuple[bool, list[dict[str, Any]]]:
        if node_id in self.validated:
            return self.validated[node_id]
        node = self.prompt[node_id]
        inputs = node["inputs"]
        class_type = node["class_type"]
        errors: list[dict[str, Any]] = []
        valid = True
        for name, category, input_type, extra in input_specs(self.info[class_type]):
            if name not in inputs:
                if category == "required":
                    missing = _error(
                        "required_input_missing",
                        "Required input is missing",
                        name,
                        {"input_name": name},
                    )
                    errors.append(missing)
                continue
            if isinstance(inputs[name], list):
                valid = self._check_link(name, inputs[name], input_type, extra, errors) and valid
            else:
                # LoadImage validates its file itself (VALIDATE_INPUTS), not against the list.
                own_check = class_type == "LoadImage" and name == "image"
                self._check_value(inputs, name, input_type, extra, errors, own_check=own_check)
        if class_type == "LoadImage":
            self._check_image_file(inputs, errors)
        result = (valid and not errors, errors)
        self.validated[node_id] = result
        return result

    def _check_link(
        self,
        name: str,
        link: list[Any],
        input_type: Any,
        extra: dict[str, Any],
        errors: list[dict[str, Any]],
    ) -> bool:
        config = [input_type, extra]
        if len(link) != 2:
            message = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
            bad = {"input_name": name, "input_config": config, "received_value": link}
            errors.append(_error("bad_linked_input", message, name, bad))
            return True
        source_id, slot = link
        source_class = self.prompt[source_id]["class_type"]  # KeyError: ComfyUI's behaviour
        received = tuple(self.info[source_class]["output"])[slot]
        if not types_match(received, input_type):
            details = f"{name}, received_type({received}) mismatch input_type({input_type})"
            extra_info = {
                "input_name": name,
                "input_config": config,
                "received_type": received,
                "linked_node": link,
            }
            message = "Return type mismatch between linked nodes"
            errors.append(_error("return_type_mismatch", message, details, extra_info))
            return True
        try:
            return self.validate(source_id)[0]
        except Exception as exc:
            extra_info = {
                "input_name": name,
                "input_config": config,
                "exception_message": str(exc),
                "exception_type": full_type_name(type(exc)),
                "traceback": traceback.format_tb(exc.__traceback__),
                "linked_node": link,
            }
            reason = _error(
                "exception_during_inner_validation",
                "Exception when validating inner node",
                str(exc),
                extra_info,
            )
            self.validated[source_id] = (False, [reason])
            return False

    def _check_value(
        self,
        inputs: dict[str, Any],
        name: str,
        input_type: Any,
        extra: dict[str, Any],
        errors: list[dict[str, Any]],
        *,
        own_check: bool,
    ) -> None:
        value = inputs[name]
        if isinstance(value, dict) and "__value__" in value:
            value = inputs[name] = value["__value__"]
        try:
            value = inputs[name] = _convert(value, input_type)
        except (TypeError, ValueError) as exc:
            details = {
                "input_name": name,
                "input_config": [input_type, extra],
                "received_value": value,
                "exception_message": str(exc),
            }
            message = f"Failed to convert an input value to a {input_type} value"
            errors.append(_error("invalid_input_type", message, f"{name}, {value}, {exc}", details))
            return
        if not own_check and (error := _range_or_list_error(name, value, input_type, extra)):
            errors.append(error)

    def _check_image_file(self, inputs: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        image = inputs.get("image")
        if image is None or isinstance(image, list) or self.image_exists(str(image)):
            return
        details = f"image - Invalid image file: {image}"
        message = "Custom validation failed for node"
        errors.append(_error("custom_validation_failed", message, details, {"input_name": "image"}))


def validate_prompt(
    prompt: dict[str, Any], info: dict[str, Any], image_exists: Callable[[str], bool]
) -> Validation:
    """Validate a prompt as ComfyUI does; converts widget values in place, as ComfyUI does."""
    outputs, error = find_outputs(prompt, info)
    if error is not None:
        return Validation(False, error, [], {})
    if not outputs:
        return Validation(False, _error("prompt_no_outputs", "Prompt has no outputs"), [], {})
    validator = _Validator(prompt, info, image_exists)
    good: list[str] = []
    own_errors: list[dict[str, Any]] = []
    node_errors: dict[str, Any] = {}
    for output_id in outputs:
        ok, reasons = validator.validate_output(output_id)
        if ok:
            good.append(output_id)
            continue
        own_errors += reasons
        for node_id, (node_ok, node_reasons) in validator.validated.items():
            if node_ok or not node_reasons:
                continue
            entry = node_errors.setdefault(
                node_id,
                {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                },
            )
            entry["dependent_outputs"].append(output_id)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for e in own_errors)
        message = "Prompt outputs failed validation"
        failed = _error("prompt_outputs_failed_validation", message, details)
        return Validation(False, failed, [], node_errors)
    return Validation(True, None, good, node_errors)


# --------------------------------------------------------------------------- execution helpers


def execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """The nodes the outputs need, dependencies first (inputs visited in their given order)."""
    order: list[str] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if is_link(value):
                visit(value[0])
        order.append(node_id)

    for output_id in outputs:
        visit(output_id)
    return order


def failure_target(prompt: dict[str, Any], order: list[str], outputs: list[str]) -> str:
    """Where "fail"/"stall" strike: the sampler, else the node feeding the first output."""
    for node_id in order:
        if prompt[node_id]["class_type"] in SAMPLER_CLASSES:
            return node_id
    first = prompt[outputs[0]]["inputs"]
    links = [v[0] for v in first.values() if is_link(v)]
    return links[0] if links else outputs[0]


def node_signatures(
    prompt: dict[str, Any], order: list[str], is_changed: dict[str, str | None]
) -> dict[str, str]:
    """Cache keys: class, IS_CHANGED and inputs, with links replaced by their source's key."""
    signatures: dict[str, str] = {}
    for node_id in order:  # dependencies come first
        node = prompt[node_id]
        parts: list[Any] = [node["class_type"], is_changed.get(node_id)]
        for key in sorted(node["inputs"]):
            value = node["inputs"][key]
            if is_link(value):
                parts.append([key, signatures.get(value[0]), value[1]])
            else:
                parts.append([key, value])
        signatures[node_id] = json.dumps(parts, sort_keys=True, default=str)
    return signatures


def scaled_size(width: int, height: int, megapixels: float, steps: int = 1) -> tuple[int, int]:
    """ImageScaleToTotalPixels' output size."""
    scale = math.sqrt(megapixels * 1024 * 1024 / (width * height))
    steps = max(1, steps)
    return round(width * scale / steps) * steps, round(height * scale / steps) * steps


def split_annotation(name: str) -> tuple[str, str | None]:
    """`"x.png [output]"` -> `("x.png", "output")`, as folder_paths.annotated_filepath."""
    for kind in ("input", "output", "temp"):
        if name.endswith(f" [{kind}]"):
            return name[: -len(kind) - 3], kind
    return name, None


def _fill_vars(prefix: str, width: int, height: int) -> str:
    now = time.localtime()
    values = {
        "%width%": width,
        "%height%": height,
        "%year%": now.tm_year,
        "%month%": f"{now.tm_mon:02}",
        "%day%": f"{now.tm_mday:02}",
        "%hour%": f"{now.tm_hour:02}",
        "%minute%": f"{now.tm_min:02}",
        "%second%": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(key, str(value))
    return prefix


def next_counter(folder: Path, filename: str) -> int:
    """ComfyUI's counter: one more than the highest `{filename}_NNNNN_` in `folder`."""
    if not folder.is_dir():
        return 1
    counters = []
    for name in os.listdir(folder):
        prefix = name[: len(filename) + 1]
        try:
            digits = int(name[len(filename) + 1 :].split("_")[0])
        except ValueError:
            digits = 0
        if os.path.normcase(prefix[:-1]) == os.path.normcase(filename) and prefix[-1:] == "_":
            counters.append(digits)
    return max(counters) + 1 if counters else 1


def save_target(base: Path, filename_prefix: str, width: int, height: int) -> tuple[Path, str, str]:
    """(folder, file name, subfolder) for the next image saved under `filename_prefix`."""
    if "%" in filename_prefix:
        filename_prefix = _fill_vars(filename_prefix, width, height)
    normalised = os.path.normpath(filename_prefix)
    subfolder, filename = os.path.dirname(normalised), os.path.basename(normalised)
    folder = base / subfolder
    if os.path.commonpath((str(base), os.path.abspath(folder))) != str(base):
        raise ValueError("**** ERROR: Saving image outside the output folder is not allowed.")
    counter = next_counter(folder, filename)
    return folder, f"{filename.replace('%batch_num%', '0')}_{counter:05}_.png", subfolder


def format_inputs(node: dict[str, Any]) -> dict[str, list[Any]]:
    """`current_inputs` of an execution_error: each input as a one-element list."""
    formatted: dict[str, list[Any]] = {}
    for name, value in node["inputs"].items():
        if is_link(value):
            formatted[name] = [f"<output {value[1]} of node {value[0]}>"]
        elif value is None or isinstance(value, (int, float, bool, str)):
            formatted[name] = [value]
        else:
            formatted[name] = [str(value)]
    return formatted


def progress_entry(
    prompt_id: str, node_id: str, value: float, top: float, state: str
) -> dict[str, Any]:
    """One node's entry in a progress_state message."""
    return {
        "value": value,
        "max": top,
        "state": state,
        "node_id": node_id,
        "prompt_id": prompt_id,
        "display_node_id": node_id,
        "parent_node_id": None,
        "real_node_id": node_id,
    }


def select_history(
    history: dict[str, Any], max_items: int | None, offset: int = -1
) -> dict[str, Any]:
    """GET /history's window: `max_items` entries from `offset` (the last ones by default)."""
    if offset < 0 and max_items is not None:
        offset = len(history) - max_items
    selected: dict[str, Any] = {}
    for index, (key, value) in enumerate(history.items()):
        if index >= offset:
            selected[key] = value
            if max_items is not None and len(selected) >= max_items:
                break
    return selected


def now_ms() -> int:
    """A ComfyUI timestamp (milliseconds)."""
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- server state


@dataclass
class QueueItem:
    """A queued prompt; `as_list()` is ComfyUI's 5-element queue/history form."""

    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    behaviour: str

    @property
    def client_id(self) -> str | None:
        """The websocket client the prompt's messages go to."""
        client_id = self.extra_data.get("client_id")
        return client_id if isinstance(client_id, str) else None

    def as_list(self) -> list[Any]:
        """[number, prompt_id, prompt, extra_data, outputs_to_execute]."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class _Run:
    item: QueueItem
    messages: list[list[Any]] = field(default_factory=list)
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)
    executed: list[str] = field(default_factory=list)
    ui: dict[str, dict[str, Any]] = field(default_factory=dict)
    images: dict[str, Image.Image | None] = field(default_factory=dict)
    dropped: bool = False


class _Interrupted(Exception):
    pass


class _NodeFailed(Exception):
    def __init__(self, exception_type: str, message: str, trace: list[str]) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.message = message
        self.trace = trace


@dataclass
class _Connection:
    sid: str
    ws: web.WebSocketResponse
    transport: asyncio.BaseTransport | None


# --------------------------------------------------------------------------- the server


class ComfyTestServer(BackgroundServer):
    """ComfyUI's HTTP + websocket API on `host` (127.0.0.1), run on its own loop in a thread.

    `behaviour`, `models_installed`, `node_delay_s`, `calls` and `interrupts` are development
    hooks: they play ComfyUI's failures and record what a client asked for.
    """

    thread_name = "comfy-test-server"

    def __init__(
        self,
        root: Path,
        *,
        behaviour: str = "success",
        models_installed: bool = True,
        node_delay_s: float = 0.01,
        sampler_steps: int = 4,
        cache_outputs: bool = True,
        port: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        self.root = Path(root).resolve()
        self.input_dir = self.root / "input"
        self.output_dir = self.root / "output"
        self.temp_dir = self.root / "temp"
        for folder in (self.input_dir, self.output_dir, self.temp_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.behaviour = behaviour
        self.models_installed = models_installed
        self.node_delay_s = node_delay_s
        self.sampler_steps = sampler_steps
        self.cache_outputs = cache_outputs
        super().__init__(port=port, host=host)
        self.calls: list[tuple[str, str]] = []
        self.interrupts = 0
        self._worker: asyncio.Task[None] | None = None
        self._prepare()

    # ---- lifecycle (called from the test's thread)

    @property
    def behaviour(self) -> str:
        """How the next prompts run: one of BEHAVIOURS (read when /prompt is posted)."""
        return self._behaviour

    @behaviour.setter
    def behaviour(self, value: str) -> None:
        if value not in BEHAVIOURS:
            raise ValueError(f"behaviour must be one of {BEHAVIOURS}, not {value!r}")
        self._behaviour = value

    def _prepare(self) -> None:
        self._pending: list[QueueItem] = []
        self._running: QueueItem | None = None
        self._history: dict[str, dict[str, Any]] = {}
        self._hidden_history_reads: dict[str, int] = {}
        self._cache: dict[str, tuple[Image.Image | None, dict[str, Any] | None]] = {}
        self._connections: list[_Connection] = []
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._number = 0
        self._last_node: str | None = None

    def _middlewares(self) -> list[Any]:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            self.calls.append((request.method, request.path_qs))
            response: web.StreamResponse = await handler(request)
            return response

        return [record]

    async def _started(self) -> None:
        self._wakeup = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._worker = asyncio.create_task(self._work())

    async def _stopping(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for connection in self._connections:
            if connection.transport is not None:
                connection.transport.close()

    async def _stopped(self) -> None:
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() if t is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def _routes(self) -> list[web.RouteDef]:
        return [
            web.get("/", self._index),
            web.get("/ws", self._websocket),
            web.get("/system_stats", self._get_system_stats),
            web.get("/object_info", self._get_object_info),
            web.get("/object_info/{node_class}", self._get_object_info_node),
            web.get("/queue", self._get_queue),
            web.post("/queue", self._post_queue),
            web.get("/prompt", self._get_prompt),
            web.post("/prompt", self._post_prompt),
            web.post("/upload/image", self._upload_image),
            web.get("/history", self._get_history),
            web.get("/history/{prompt_id}", self._get_history_item),
            web.post("/history", self._post_history),
            web.get("/view", self._view),
            web.post("/interrupt", self._post_interrupt),
            web.post("/free", self._post_free),
        ]

    # ---- files

    def _dir_for(self, kind: str | None) -> Path | None:
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}.get(
            kind or "input"
        )

    def _input_path(self, name: str) -> Path | None:
        """Where an (annotated) LoadImage name points, or None outside the folders."""
        filename, kind = split_annotation(name)
        base = self._dir_for(kind)
        if base is None:
            return None
        path = Path(os.path.abspath(base / filename))
        return path if os.path.commonpath((str(base), str(path))) == str(base) else None

    def _image_exists(self, name: str) -> bool:
        path = self._input_path(name)
        return path is not None and path.is_file()

    def _input_files(self) -> list[str]:
        files = [p.name for p in self.input_dir.iterdir() if p.is_file()]
        return sorted(f for f in files if (mimetypes.guess_type(f)[0] or "").startswith("image/"))

    def _object_info(self) -> dict[str, Any]:
        return object_info_view(
            load_object_info(),
            models_installed=self.models_installed,
            input_files=self._input_files(),
        )

    # ---- websocket messages

    def _queue_info(self) -> dict[str, Any]:
        remaining = len(self._pending) + (1 if self._running is not None else 0)
        return {"exec_info": {"queue_remaining": remaining}}

    async def _send(self, sid: str | None, event: str, data: dict[str, Any]) -> None:
        """To the client `sid`, or to every client when `sid` is None (ComfyUI's send_sync)."""
        text = json.dumps({"type": event, "data": data})
        if sid is None:
            targets = list(self._sockets.values())
        else:
            targets = [self._sockets[sid]] if sid in self._sockets else []
        for ws in targets:
            if ws.closed:
                continue
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(text)

    async def _broadcast_status(self) -> None:
        await self._send(None, "status", {"status": self._queue_info()})

    async def _to_client(self, run: _Run, event: str, data: dict[str, Any]) -> None:
        """Messages ComfyUI sends only when the prompt has a client_id."""
        if run.item.client_id is not None:
            await self._send(run.item.client_id, event, data)

    async def _add_message(
        self, run: _Run, event: str, data: dict[str, Any], *, broadcast: bool = False
    ) -> None:
        """A message that is also kept in the history's status.messages."""
        data = {**data, "timestamp": now_ms()}
        run.messages.append([event, data])
        if run.item.client_id is not None or broadcast:
            await self._send(run.item.client_id, event, data)

    async def _send_progress_state(self, run: _Run) -> None:
        data = {"prompt_id": run.item.prompt_id, "nodes": run.progress}
        await self._send(run.item.client_id, "progress_state", data)

    def _drop_client(self, sid: str | None) -> None:
        """Cut the TCP connections of a client's websockets (no close frame)."""
        for connection in self._connections:
            if (sid is None or connection.sid == sid) and connection.transport is not None:
                connection.transport.close()

    # ---- routes

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        sid = request.query.get("clientId") or uuid.uuid4().hex
        connection = _Connection(sid, ws, request.transport)
        self._connections.append(connection)
        self._sockets[sid] = ws
        try:
            await self._send(sid, "status", {"status": self._queue_info(), "sid": sid})
            running = self._running
            if running is not None and running.client_id == sid and self._last_node is not None:
                await self._send(sid, "executing", {"node": self._last_node})
            async for _message in ws:
                pass
        finally:
            if self._sockets.get(sid) is ws:
                del self._sockets[sid]
            self._connections.remove(connection)
        return ws

    async def _index(self, request: web.Request) -> web.Response:
        # ComfyUI serves its front end here; clients (worker-comfyui) poll it for "is it up".
        return web.Response(text=INDEX_HTML, content_type="text/html")

    async def _get_system_stats(self, request: web.Request) -> web.Response:
        return web.json_response(system_stats())

    async def _get_object_info(self, request: web.Request) -> web.Response:
        return web.json_response(self._object_info())

    async def _get_object_info_node(self, request: web.Request) -> web.Response:
        node_class = request.match_info["node_class"]
        info = self._object_info()
        return web.json_response({node_class: info[node_class]} if node_class in info else {})

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [self._running.as_list()] if self._running is not None else []
        pending = [item.as_list() for item in self._pending]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _server_error()
        if body.get("clear"):
            self._pending.clear()
        doomed = set(body.get("delete", []))
        self._pending = [item for item in self._pending if item.prompt_id not in doomed]
        await self._broadcast_status()
        return web.Response(status=200)

    async def _get_prompt(self, request: web.Request) -> web.Response:
        return web.json_response(self._queue_info())

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _server_error()
        if not isinstance(body, dict):
            return _server_error()
        number = self._take_number(body)
        if "prompt" not in body:
            error = _error("no_prompt", "No prompt provided", "No prompt provided")
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            return _server_error()
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        result = validate_prompt(prompt, self._object_info(), self._image_exists)
        extra_data = dict(body.get("extra_data") or {})
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not result.ok:
            rejection = {"error": result.error, "node_errors": result.node_errors}
            return web.json_response(rejection, status=400)
        extra_data["create_time"] = now_ms()
        item = QueueItem(number, prompt_id, prompt, extra_data, result.outputs, self.behaviour)
        bisect.insort(self._pending, item, key=lambda queued: queued.number)
        await self._broadcast_status()
        self._wakeup.set()
        reply = {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        return web.json_response(reply)

    def _take_number(self, body: dict[str, Any]) -> float:
        if "number" in body:
            return float(body["number"])
        number = self._number
        self._number += 1
        return -number if body.get("front") else number

    async def _upload_image(self, request: web.Request) -> web.Response:
        post = await request.post()
        image = post.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        kind = str(post.get("type") or "input")
        base = self._dir_for(kind)
        if base is None:
            return _server_error()
        subfolder = str(post.get("subfolder", ""))
        folder = Path(os.path.join(base, os.path.normpath(subfolder)))
        path = Path(os.path.abspath(folder / image.filename))
        if os.path.commonpath((str(base), str(path))) != str(base):
            return web.Response(status=400)
        folder.mkdir(parents=True, exist_ok=True)
        data = image.file.read()
        name = image.filename
        if str(post.get("overwrite")) not in ("true", "1"):
            stem, suffix = os.path.splitext(image.filename)
            index = 1
            while path.exists():
                if hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest():
                    return web.json_response({"name": name, "subfolder": subfolder, "type": kind})
                name = f"{stem} ({index}){suffix}"
                path = folder / name
                index += 1
        path.write_bytes(data)
        return web.json_response({"name": name, "subfolder": subfolder, "type": kind})

    async def _get_history(self, request: web.Request) -> web.Response:
        max_items = request.query.get("max_items")
        offset = request.query.get("offset")
        selected = select_history(
            self._history,
            int(max_items) if max_items is not None else None,
            int(offset) if offset is not None else -1,
        )
        return web.json_response(selected)

    async def _get_history_item(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        if prompt_id not in self._history:
            return web.json_response({})
        if self._hidden_history_reads.get(prompt_id, 0) > 0:
            self._hidden_history_reads[prompt_id] -= 1
            return web.json_response({})
        return web.json_response({prompt_id: self._history[prompt_id]})

    async def _post_history(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _server_error()
        if body.get("clear"):
            self._history.clear()
        for prompt_id in body.get("delete", []):
            self._history.pop(prompt_id, None)
        return web.Response(status=200)

    async def _view(self, request: web.Request) -> web.StreamResponse:
        if "filename" not in request.query:
            return web.Response(status=404)
        filename, kind = split_annotation(request.query["filename"])
        if not filename or filename[0] == "/" or ".." in filename:
            return web.Response(status=400)
        base = self._dir_for(kind or request.query.get("type", "output"))
        if base is None:
            return web.Response(status=400)
        folder = base
        if "subfolder" in request.query:
            folder = Path(os.path.abspath(base / request.query["subfolder"]))
            if os.path.commonpath((str(folder), str(base))) != str(base):
                return web.Response(status=403)
        name = os.path.basename(filename)
        path = folder / name
        if not path.is_file():
            return web.Response(status=404)
        return web.FileResponse(path, headers={"Content-Disposition": f'filename="{name}"'})

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        self.interrupts += 1
        try:
            body = await request.json()
        except ValueError:
            body = {}
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        running = self._running
        if running is not None and (not prompt_id or prompt_id == running.prompt_id):
            self._interrupt.set()
        return web.Response(status=200)

    async def _post_free(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _server_error()
        if body.get("free_memory"):
            self._cache.clear()
        return web.Response(status=200)

    # ---- the worker: one prompt at a time, in `number` order

    async def _work(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            item = self._pending.pop(0)
            self._running = item
            self._interrupt.clear()
            await self._broadcast_status()
            run = _Run(item)
            try:
                success = await self._execute(run)
            except Exception:
                log.exception("comfy stand-in: run %s crashed", item.prompt_id)
                success = False
            self._record_history(run, success)
            self._running = None
            self._last_node = None
            await self._broadcast_status()
            await self._to_client(run, "executing", {"node": None, "prompt_id": item.prompt_id})

    def _record_history(self, run: _Run, success: bool) -> None:
        item = run.item
        self._history[item.prompt_id] = {
            "prompt": item.as_list(),
            "outputs": run.ui,
            "status": {
                "status_str": "success" if success else "error",
                "completed": success,
                "messages": run.messages,
            },
            "meta": {
                node_id: {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                for node_id in run.ui
            },
        }
        if item.behaviour == "slow_history":
            self._hidden_history_reads[item.prompt_id] = SLOW_HISTORY_EMPTY_READS

    async def _execute(self, run: _Run) -> bool:
        item = run.item
        await self._add_message(run, "execution_start", {"prompt_id": item.prompt_id})
        order = execution_order(item.prompt, item.outputs)
        signatures = node_signatures(item.prompt, order, self._is_changed(item.prompt, order))
        use_cache = self.cache_outputs and item.behaviour not in ("fail", "stall")
        cached = [n for n in order if use_cache and signatures[n] in self._cache]
        cached_nodes = [n for n in item.prompt if n in cached]  # ComfyUI lists prompt order
        await self._add_message(
            run, "execution_cached", {"nodes": cached_nodes, "prompt_id": item.prompt_id}
        )
        target = failure_target(item.prompt, order, item.outputs)
        for node_id in order:
            if node_id in cached:
                await self._replay_cached(run, node_id, signatures[node_id])
                continue
            if not await self._run_node_reporting(run, node_id, target):
                return False
            self._cache[signatures[node_id]] = (run.images.get(node_id), run.ui.get(node_id))
        await self._add_message(run, "execution_success", {"prompt_id": item.prompt_id})
        return True

    def _is_changed(self, prompt: dict[str, Any], order: list[str]) -> dict[str, str | None]:
        """LoadImage's IS_CHANGED: the file's sha256 (a re-upload under the name re-runs it)."""
        changed: dict[str, str | None] = {}
        for node_id in order:
            node = prompt[node_id]
            if node["class_type"] != "LoadImage":
                continue
            path = self._input_path(str(node["inputs"].get("image")))
            if path is None or not path.is_file():
                changed[node_id] = None
                continue
            changed[node_id] = hashlib.sha256(path.read_bytes()).hexdigest()
        return changed

    async def _replay_cached(self, run: _Run, node_id: str, signature: str) -> None:
        image, ui = self._cache[signature]
        run.images[node_id] = image
        if not ui:
            return
        run.ui[node_id] = ui
        data = {"node": node_id, "display_node": node_id, "output": ui}
        await self._to_client(run, "executed", {**data, "prompt_id": run.item.prompt_id})
        run.progress[node_id] = progress_entry(run.item.prompt_id, node_id, 1, 1, "finished")
        await self._send_progress_state(run)

    async def _run_node_reporting(self, run: _Run, node_id: str, target: str) -> bool:
        """Run one node; on failure or interrupt, send and record what ComfyUI does."""
        item = run.item
        node_type = item.prompt[node_id]["class_type"]
        head = {"prompt_id": item.prompt_id, "node_id": node_id, "node_type": node_type}
        try:
            await self._run_node(run, node_id, target)
        except _Interrupted:
            data = {**head, "executed": list(run.executed)}
            await self._add_message(run, "execution_interrupted", data, broadcast=True)
            return False
        except _NodeFailed as failure:
            data = {
                **head,
                "executed": list(run.executed),
                "exception_message": failure.message,
                "exception_type": failure.exception_type,
                "traceback": failure.trace,
                "current_inputs": format_inputs(item.prompt[node_id]),
                "current_outputs": list(item.prompt),
            }
            await self._add_message(run, "execution_error", data)
            return False
        return True

    def _check_interrupt(self) -> None:
        if self._interrupt.is_set():
            raise _Interrupted

    async def _run_node(self, run: _Run, node_id: str, target: str) -> None:
        item = run.item
        run.progress[node_id] = progress_entry(item.prompt_id, node_id, 0.0, 1.0, "running")
        await self._send_progress_state(run)
        executing = {"node": node_id, "display_node": node_id, "prompt_id": item.prompt_id}
        await self._to_client(run, "executing", executing)
        self._last_node = node_id
        if item.behaviour == "drop_socket" and not run.dropped:
            run.dropped = True
            self._drop_client(item.client_id)
        self._check_interrupt()
        if node_id == target and item.behaviour == "fail":
            raise _NodeFailed(FAIL_EXCEPTION_TYPE, FAIL_EXCEPTION_MESSAGE, list(_FAIL_TRACEBACK))
        if node_id == target and item.behaviour == "stall":
            await self._interrupt.wait()
            raise _Interrupted
        await self._compute(run, node_id)
        await asyncio.sleep(self.node_delay_s)
        self._check_interrupt()
        if node_id in run.ui:
            data = {"node": node_id, "display_node": node_id, "output": run.ui[node_id]}
            await self._to_client(run, "executed", {**data, "prompt_id": item.prompt_id})
        entry = run.progress[node_id]
        entry.update(state="finished", value=entry["max"])
        await self._send_progress_state(run)
        run.executed.append(node_id)

    async def _compute(self, run: _Run, node_id: str) -> None:
        """The little real work: images in, scaled, inverted, saved; samplers report progress."""
        node = run.item.prompt[node_id]
        class_type, inputs = node["class_type"], node["inputs"]
        upstream = [run.images.get(v[0]) for v in inputs.values() if is_link(v)]
        image = next((i for i in upstream if i is not None), None)
        try:
            if class_type == "LoadImage":
                image = self._load_image(str(inputs["image"]))
            elif class_type == "ImageScaleToTotalPixels" and image is not None:
                image = _scale(image, inputs)
            elif class_type == "ImageInvert" and image is not None:
                image = ImageOps.invert(image.convert("RGB"))
            elif class_type in ("SaveImage", "PreviewImage"):
                blank = Image.new("RGB", (512, 512))
                run.ui[node_id] = self._save(run, node, image if image is not None else blank)
        except Exception as exc:
            trace = traceback.format_tb(exc.__traceback__)
            raise _NodeFailed(full_type_name(type(exc)), f"{exc}\n", trace) from exc
        run.images[node_id] = image
        if class_type in SAMPLER_CLASSES:
            await self._sample(run, node_id)

    def _load_image(self, name: str) -> Image.Image:
        path = self._input_path(name)
        if path is None:
            raise FileNotFoundError(name)
        with Image.open(str(path)) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")

    def _save(self, run: _Run, node: dict[str, Any], image: Image.Image) -> dict[str, Any]:
        """SaveImage/PreviewImage: a PNG with the prompt in its metadata, named as ComfyUI does."""
        preview = node["class_type"] == "PreviewImage"
        prefix = str(node["inputs"].get("filename_prefix", "ComfyUI"))
        if preview:
            prefix += "_temp_" + "".join(random.choices("abcdefghijklmnopqrstupvxyz", k=5))  # noqa: S311 - a name, not a secret
        base = self.temp_dir if preview else self.output_dir
        folder, filename, subfolder = save_target(base, prefix, image.width, image.height)
        folder.mkdir(parents=True, exist_ok=True)
        metadata = PngInfo()
        metadata.add_text("prompt", json.dumps(run.item.prompt))
        for key, value in (run.item.extra_data.get("extra_pnginfo") or {}).items():
            metadata.add_text(key, json.dumps(value))
        image.save(folder / filename, pnginfo=metadata, compress_level=1 if preview else 4)
        kind = "temp" if preview else "output"
        return {"images": [{"filename": filename, "subfolder": subfolder, "type": kind}]}

    async def _sample(self, run: _Run, node_id: str) -> None:
        steps = self.sampler_steps
        for step in range(1, steps + 1):
            await asyncio.sleep(self.node_delay_s)
            self._check_interrupt()
            run.progress[node_id].update(value=step, max=steps)
            await self._send_progress_state(run)
            progress = {"value": step, "max": steps, "prompt_id": run.item.prompt_id}
            await self._to_client(run, "progress", {**progress, "node": node_id})


def _scale(image: Image.Image, inputs: dict[str, Any]) -> Image.Image:
    size = scaled_size(
        image.width,
        image.height,
        float(inputs["megapixels"]),
        int(inputs.get("resolution_steps", 1)),
    )
    method = _UPSCALE_FILTERS.get(str(inputs.get("upscale_method")), Image.Resampling.LANCZOS)
    return image.resize(size, method)


def _server_error() -> web.Response:
    """aiohttp's answer when a ComfyUI handler raises (e.g. on a malformed JSON body)."""
    return web.Response(status=500, text=_SERVER_ERROR_TEXT, content_type="text/plain")


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stand-in's flags, shared by `klein comfy-standin` and `python -m`."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8188, help="listen port (0: a free one)")
    parser.add_argument("--root", type=Path, required=True, help="ComfyUI folder (input/, output/)")
    parser.add_argument("--behaviour", choices=BEHAVIOURS, default="success")
    parser.add_argument("--no-models", action="store_true", help="loaders list no model files")
    parser.add_argument("--node-delay-s", type=float, default=0.05)
    parser.add_argument("--sampler-steps", type=int, default=4)


def serve(args: argparse.Namespace) -> int:
    """Serve in the foreground until Ctrl-C, so the handler can be pointed at it."""
    server = ComfyTestServer(
        args.root,
        behaviour=args.behaviour,
        models_installed=not args.no_models,
        node_delay_s=args.node_delay_s,
        sampler_steps=args.sampler_steps,
        port=args.port,
        host=args.host,
    )
    with contextlib.suppress(KeyboardInterrupt), server:
        banner = f"ComfyUI stand-in on {server.url} (root {server.root}); Ctrl-C stops it"
        print(banner, flush=True)
        threading.Event().wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m devtools.comfy_standin`: the same as `klein comfy-standin`."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.comfy_standin", description="A ComfyUI protocol stand-in"
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    return serve(args)


if __name__ == "__main__":
    raise SystemExit(main())
