"""Folding ComfyUI's websocket messages and history entries into one run state. Pure.

Message shapes are those of a real ComfyUI v0.33.0, as recorded in
devtools/comfy_recordings/api_transcript.json.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any


class Phase(StrEnum):
    """Where a prompt is in ComfyUI's life cycle."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


FINISHED = frozenset({Phase.SUCCEEDED, Phase.FAILED, Phase.INTERRUPTED})


@dataclass(frozen=True)
class RunState:
    """What we know of one prompt's run."""

    prompt_id: str
    phase: Phase = Phase.QUEUED
    node: str | None = None
    step: int | None = None
    steps: int | None = None
    error: str | None = None

    @property
    def done(self) -> bool:
        """True once the prompt has finished, well or badly."""
        return self.phase in FINISHED


def fold(state: RunState, message: Mapping[str, Any]) -> RunState:
    """The state after one websocket message; messages of other prompts change nothing."""
    data = message.get("data")
    if not isinstance(data, Mapping) or data.get("prompt_id") != state.prompt_id or state.done:
        return state
    match message.get("type"):
        case "execution_start":
            return replace(state, phase=Phase.RUNNING)
        case "executing" if data.get("node") is None:
            return replace(state, phase=Phase.SUCCEEDED, node=None)
        case "executing":
            return replace(
                state, phase=Phase.RUNNING, node=str(data["node"]), step=None, steps=None
            )
        case "progress":
            return replace(state, step=_int(data.get("value")), steps=_int(data.get("max")))
        case "execution_success":
            return replace(state, phase=Phase.SUCCEEDED, node=None)
        case "execution_error":
            return replace(state, phase=Phase.FAILED, error=describe_node_failure(data))
        case "execution_interrupted":
            return replace(state, phase=Phase.INTERRUPTED, error=describe_node_failure(data))
    return state


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def describe_node_failure(data: Mapping[str, Any]) -> str:
    """`<node type>: <message>` from an execution_error or execution_interrupted message."""
    node_type = data.get("node_type") or "ComfyUI"
    message = str(data.get("exception_message") or "").strip()
    if not message:
        message = "interrupted" if "exception_type" not in data else str(data["exception_type"])
    return f"{node_type}: {_one_line(message)}"


def describe_rejection(body: object) -> str:
    """`<node type>: <message>` from a `POST /prompt` 400 body (node_errors first)."""
    if not isinstance(body, Mapping):
        return "ComfyUI: the graph was refused"
    node_errors = body.get("node_errors")
    if isinstance(node_errors, Mapping) and node_errors:
        return "; ".join(_node_error(entry) for entry in node_errors.values())
    error = body.get("error")
    if isinstance(error, Mapping):
        extra = error.get("extra_info")
        node_type = extra.get("class_type") if isinstance(extra, Mapping) else None
        return f"{node_type or 'ComfyUI'}: {_one_line(str(error.get('message', 'refused')))}"
    return f"ComfyUI: {_one_line(str(error or 'the graph was refused'))}"


def _node_error(entry: object) -> str:
    if not isinstance(entry, Mapping):
        return "ComfyUI: invalid graph"
    errors = entry.get("errors") or [{}]
    first = errors[0] if isinstance(errors[0], Mapping) else {}
    detail = first.get("details") or ""
    message = str(first.get("message") or "invalid input")
    text = f"{message}: {detail}" if detail else message
    return f"{entry.get('class_type', 'ComfyUI')}: {_one_line(text)}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def state_from_history(prompt_id: str, entry: Mapping[str, Any] | None) -> RunState:
    """The state a `/history/{id}` entry shows; QUEUED while ComfyUI has no entry yet."""
    state = RunState(prompt_id)
    status = entry.get("status") if entry else None
    if not isinstance(status, Mapping):
        return state
    for name, data in status.get("messages") or []:
        state = fold(state, {"type": name, "data": data})
    if state.done:
        return state
    if status.get("status_str") == "success" or status.get("completed") is True:
        return replace(state, phase=Phase.SUCCEEDED)
    if status.get("status_str") == "error":
        return replace(state, phase=Phase.FAILED, error=state.error or "ComfyUI: execution failed")
    return state


def output_images(entry: Mapping[str, Any], node_id: str) -> list[Mapping[str, Any]]:
    """The image records (`filename`, `subfolder`, `type`) a node saved, from a history entry."""
    outputs = entry.get("outputs")
    node_output = outputs.get(node_id) if isinstance(outputs, Mapping) else None
    images = node_output.get("images") if isinstance(node_output, Mapping) else None
    return [image for image in images or [] if isinstance(image, Mapping)]


# Plain words for what a prompt is doing, for people watching a job (RunPod's /status, the
# orchestrator's works.progress). Node class types map to a stage; unknown ones are "running".
STAGE_PREPARING = "preparing image"
STAGE_BY_PHASE = {
    Phase.QUEUED: "queued in ComfyUI",
    Phase.SUCCEEDED: "finishing",
    Phase.FAILED: "failed",
    Phase.INTERRUPTED: "interrupted",
}
STAGE_BY_NODE_TYPE = {
    "LoadImage": STAGE_PREPARING,
    "ImageScaleToTotalPixels": STAGE_PREPARING,
    "ImageScale": STAGE_PREPARING,
    "GetImageSize": STAGE_PREPARING,
    "VAEEncode": "encoding image",
    "CLIPTextEncode": "reading prompt",
    "ConditioningZeroOut": "reading prompt",
    "ReferenceLatent": "reading prompt",
    "CFGGuider": "reading prompt",
    "VAEDecode": "decoding",
    "SaveImage": "saving",
    "PreviewImage": "saving",
}
# The sampler's settings (noise, scheduler, empty latent) are nodes too, run in a moment and
# often first of all: "setting up", so that "sampling" means the steps themselves.
SETUP_NODE_TYPES = frozenset(
    {"KSamplerSelect", "RandomNoise", "Flux2Scheduler", "BasicScheduler", "EmptyFlux2LatentImage"}
)
SAMPLING_NODE_TYPES = frozenset(
    {"KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced"}
)


def stage_of_node_type(node_type: str) -> str:
    """The plain-word stage a node of this class type stands for."""
    if node_type in STAGE_BY_NODE_TYPE:
        return STAGE_BY_NODE_TYPE[node_type]
    if node_type in SETUP_NODE_TYPES:
        return "setting up"
    if node_type in SAMPLING_NODE_TYPES:
        return "sampling"
    if node_type.endswith("Loader") or node_type.endswith("LoaderSimple"):
        return "loading models"
    return "running"


def stage_of(state: RunState, node_types: Mapping[str, str]) -> str:
    """The plain-word stage of a run: from its phase, or from the class type of its node."""
    if state.phase in STAGE_BY_PHASE:
        return STAGE_BY_PHASE[state.phase]
    if state.node is None:
        return "starting"
    return stage_of_node_type(node_types.get(state.node, ""))


def progress_payload(state: RunState, node_types: Mapping[str, str]) -> dict[str, Any]:
    """A small progress record for RunPod's progress_update: a plain-word stage, the phase, and
    the node type and sampling step when known."""
    payload: dict[str, Any] = {"stage": stage_of(state, node_types), "phase": state.phase.value}
    if state.node is not None:
        payload["node"] = node_types.get(state.node, state.node)
    if state.step is not None and state.steps:
        payload["step"] = state.step
        payload["steps"] = state.steps
    return payload


def preparing_payload() -> dict[str, Any]:
    """The report sent before ComfyUI sees the job (the reference image is loaded and checked)."""
    return {"stage": STAGE_PREPARING, "phase": "preparing"}


def starting_payload() -> dict[str, Any]:
    """The report of a job that waits for the worker to start (ComfyUI coming up, warm-up)."""
    return {"stage": "waiting for ComfyUI", "phase": "starting"}
