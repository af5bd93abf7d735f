"""Folding real ComfyUI messages (recorded from v0.33.0) into a run state."""

import json
from pathlib import Path

import pytest

from handler.job import comfy_message
from handler.run_state import (
    Phase,
    RunState,
    describe_rejection,
    fold,
    output_images,
    preparing_payload,
    progress_payload,
    stage_of,
    stage_of_node_type,
    state_from_history,
)
from handler.workflow import load_workflow, packaged_workflows_dir

RECORDINGS = Path(__file__).parents[2] / "devtools" / "comfy_recordings"
TRANSCRIPT = json.loads((RECORDINGS / "api_transcript.json").read_text())


def recorded_messages(title: str) -> list[dict]:
    return next(run["messages"] for run in TRANSCRIPT["ws"] if run["title"] == title)


def recorded_call(label: str) -> dict:
    return next(call for call in TRANSCRIPT["calls"] if call["label"] == label)


def prompt_id_of(messages: list[dict]) -> str:
    return next(
        m["msg"]["data"]["prompt_id"] for m in messages if "prompt_id" in m["msg"].get("data", {})
    )


def fold_all(title: str) -> tuple[RunState, list[RunState]]:
    messages = recorded_messages(title)
    state = RunState(prompt_id_of(messages))
    seen = []
    for message in messages:
        state = fold(state, message["msg"])
        seen.append(state)
    return state, seen


@pytest.mark.parametrize("title", ["graph A", "graph A again", "graph B", "graph C (progress)"])
def test_recorded_successful_runs_end_succeeded(title):
    state, _ = fold_all(title)
    assert state.phase is Phase.SUCCEEDED
    assert state.error is None


def test_progress_messages_give_sampler_steps():
    _, seen = fold_all("graph C (progress)")
    steps = [(s.node, s.step, s.steps) for s in seen if s.step is not None]
    assert steps[0] == ("7", 1, 4)
    assert steps[-1] == ("7", 4, 4)


def test_recorded_runtime_failure_names_the_node_type():
    state, _ = fold_all("runtime failure (corrupt input image)")
    assert state.phase is Phase.FAILED
    assert state.error is not None
    assert state.error.startswith("LoadImage: cannot identify image file")
    assert "\n" not in state.error


def test_klein_placeholder_weights_failure_names_a_loader():
    state, _ = fold_all("runtime failure (Klein graph, placeholder weights)")
    assert state.phase is Phase.FAILED
    assert state.error.split(":")[0] in {"UNETLoader", "CLIPLoader", "VAELoader"}


def test_the_trailing_executing_null_does_not_turn_a_failure_into_success():
    _, seen = fold_all("runtime failure (corrupt input image)")
    assert seen[-1].phase is Phase.FAILED


def test_messages_of_other_prompts_change_nothing():
    state = RunState("mine")
    for message in recorded_messages("graph A"):
        state = fold(state, message["msg"])
    assert state == RunState("mine")


def test_interrupted_message_ends_the_run():
    data = {
        "prompt_id": "p",
        "node_id": "75:64",
        "node_type": "SamplerCustomAdvanced",
        "executed": [],
    }
    state = fold(
        RunState("p", phase=Phase.RUNNING), {"type": "execution_interrupted", "data": data}
    )
    assert state.phase is Phase.INTERRUPTED
    assert state.error == "SamplerCustomAdvanced: interrupted"


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        ("unknown class_type – queue prompt", "NoSuchNode: Node 'NoSuchNode' not found."),
        ("value above max (megapixels=99) – queue prompt", "ImageScaleToTotalPixels: Value "),
        (
            "combo value not in list (upscale_method) – queue prompt",
            "ImageScaleToTotalPixels: Value not in list",
        ),
        (
            "Klein graph, model files absent – queue prompt",
            "CLIPLoader: Value not in list: clip_name:",
        ),
        ("graph with no output node – queue prompt", "ComfyUI: Prompt has no outputs"),
        ("body without 'prompt'", "ComfyUI: "),
    ],
)
def test_recorded_rejections_become_one_sentence(label, expected):
    sentence = describe_rejection(recorded_call(label)["response"])
    assert sentence.startswith(expected)
    assert "\n" not in sentence


def test_history_of_success_and_failure():
    ok = recorded_call("history A")["response"]
    prompt_id = next(iter(ok))
    assert state_from_history(prompt_id, ok[prompt_id]).phase is Phase.SUCCEEDED
    assert output_images(ok[prompt_id], "3")[0]["filename"] == "scaled_00001_.png"
    failed = recorded_call("history of failed prompt (corrupt image)")["response"]
    prompt_id = next(iter(failed))
    state = state_from_history(prompt_id, failed[prompt_id])
    assert state.phase is Phase.FAILED
    assert state.error.startswith("LoadImage: ")
    assert output_images(failed[prompt_id], "3") == []


def test_no_history_entry_means_still_queued():
    assert state_from_history("p", None).phase is Phase.QUEUED
    assert state_from_history("p", {}).phase is Phase.QUEUED


def test_progress_payload_names_the_node_type():
    state = RunState("p", phase=Phase.RUNNING, node="75:64", step=2, steps=4)
    payload = progress_payload(state, {"75:64": "SamplerCustomAdvanced"})
    assert payload == {
        "stage": "sampling",
        "phase": "running",
        "node": "SamplerCustomAdvanced",
        "step": 2,
        "steps": 4,
    }


@pytest.mark.parametrize(
    ("node_type", "stage"),
    [
        ("UNETLoader", "loading models"),
        ("CLIPLoader", "loading models"),
        ("VAELoader", "loading models"),
        ("CheckpointLoaderSimple", "loading models"),
        ("LoadImage", "preparing image"),
        ("ImageScaleToTotalPixels", "preparing image"),
        ("VAEEncode", "encoding image"),
        ("CLIPTextEncode", "reading prompt"),
        ("ReferenceLatent", "reading prompt"),
        ("SamplerCustomAdvanced", "sampling"),
        ("KSampler", "sampling"),
        ("KSamplerSelect", "setting up"),
        ("RandomNoise", "setting up"),
        ("Flux2Scheduler", "setting up"),
        ("VAEDecode", "decoding"),
        ("SaveImage", "saving"),
        ("SomeCustomNode", "running"),
        ("", "running"),
    ],
)
def test_each_node_type_has_a_plain_word_stage(node_type, stage):
    assert stage_of_node_type(node_type) == stage


@pytest.mark.parametrize(
    ("phase", "stage"),
    [
        (Phase.QUEUED, "queued in ComfyUI"),
        (Phase.SUCCEEDED, "finishing"),
        (Phase.FAILED, "failed"),
        (Phase.INTERRUPTED, "interrupted"),
    ],
)
def test_a_prompt_outside_a_node_is_named_by_its_phase(phase, stage):
    assert stage_of(RunState("p", phase=phase, node="1"), {"1": "KSampler"}) == stage


def test_a_started_prompt_before_its_first_node_is_starting():
    assert stage_of(RunState("p", phase=Phase.RUNNING), {}) == "starting"


def test_a_node_missing_from_the_graph_is_running():
    assert stage_of(RunState("p", phase=Phase.RUNNING, node="404"), {"1": "KSampler"}) == "running"


def test_every_node_of_the_shipped_klein_graph_has_a_named_stage():
    workflow = load_workflow("flux2_klein_9b_i2i", packaged_workflows_dir())
    stages = {stage_of_node_type(t) for t in workflow.node_types().values()}
    assert "running" not in stages
    assert {"loading models", "reading prompt", "sampling", "decoding", "saving"} <= stages


def test_recorded_run_reports_stages_in_order():
    _, seen = fold_all("graph C (progress)")
    types = {"6": "LoadImage", "7": "KSampler", "8": "SaveImage"}
    stages = [progress_payload(state, types)["stage"] for state in seen]
    order = list(dict.fromkeys(stages))
    assert order == [
        "queued in ComfyUI",
        "starting",
        "preparing image",
        "sampling",
        "saving",
        "finishing",
    ]


def test_the_report_before_comfyui_says_preparing_image():
    assert preparing_payload() == {"stage": "preparing image", "phase": "preparing"}


@pytest.mark.parametrize("raw", ["{", "[1]", '"text"', "null", "[" * 100_000])
def test_a_frame_that_is_no_message_object_is_ignored(raw):
    """ComfyUI's text frames are JSON objects; anything else (a proxy's, a broken server's) used
    to fail the job as 'internal error' with a traceback."""
    assert comfy_message(raw) == {}
