"""tools/ui_to_api.py turns the official UI template into the committed API graph, reproducibly."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from handler.graph_check import load_json

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "devtools" / "comfy_recordings"
TEMPLATE = DATA / "templates" / "image_flux2_klein_image_edit_9b_distilled.json"
COMMITTED = ROOT / "comfy_workflows" / "flux2_klein_9b_i2i.json"

# The overrides in tools/ui_to_api.py's docstring command: our VAE file and our defaults.
KLEIN_OVERRIDES = [
    ("75:72", "vae_name", "flux2-vae.safetensors"),
    ("75:73", "noise_seed", 0),
    ("9", "filename_prefix", "klein/output"),
]
KLEIN_ARGS = [
    str(TEMPLATE),
    str(DATA / "object_info.json"),
    "--set",
    "75:72.vae_name=flux2-vae.safetensors",
    "--set",
    "75:73.noise_seed=0",
    "--set",
    "9.filename_prefix=klein/output",
]


def load_tool() -> ModuleType:
    # tools/ is a folder of scripts, not an installed package: load the file itself.
    spec = importlib.util.spec_from_file_location("ui_to_api", ROOT / "tools" / "ui_to_api.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["ui_to_api"] = module
    spec.loader.exec_module(module)
    return module


ui_to_api = load_tool()


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    return load_json(DATA / "object_info.json")


@pytest.fixture(scope="module")
def converted(object_info: dict[str, Any]) -> dict[str, Any]:
    return ui_to_api.convert(load_json(TEMPLATE), object_info)


def test_template_converts_to_the_committed_graph_plus_our_overrides(
    converted: dict[str, Any],
) -> None:
    assert ui_to_api.apply_overrides(converted, KLEIN_OVERRIDES) == load_json(COMMITTED)


def test_docstring_command_rewrites_the_committed_file_byte_for_byte(tmp_path: Path) -> None:
    output = tmp_path / "klein.json"
    assert ui_to_api.main([*KLEIN_ARGS, "--output", str(output)]) == 0
    assert output.read_text(encoding="utf-8") == COMMITTED.read_text(encoding="utf-8")


def test_committed_graph_is_the_one_real_comfyui_validated() -> None:
    # Transcript 7b: ComfyUI rejected this graph only for the absent model files.
    calls = load_json(DATA / "api_transcript.json")["calls"]
    sent = next(c for c in calls if c["label"].startswith("Klein graph, model files absent"))
    errors = {e["type"] for n in sent["response"]["node_errors"].values() for e in n["errors"]}
    assert errors == {"value_not_in_list"}
    per_job = [
        ("76", "image", "probe_input.png"),
        ("75:73", "noise_seed", 26416064315367),
        ("9", "filename_prefix", "Flux2-Klein"),
    ]
    ours = ui_to_api.apply_overrides(load_json(COMMITTED), per_job)
    assert strip_meta(ours) == strip_meta(sent["request_json"]["prompt"])


def strip_meta(graph: dict[str, Any]) -> dict[str, Any]:
    # Titles are cosmetic (the server ignores _meta) and follow the exporting frontend's names.
    return {
        node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in graph.items()
    }


def test_bypassed_unreachable_and_note_nodes_stay_out(converted: dict[str, Any]) -> None:
    # 92 (second subgraph) and 122 are bypassed, 121 feeds only 92, 97 is a MarkdownNote.
    assert {"92", "121", "122", "97", "75"}.isdisjoint(converted)
    assert not any(node_id.startswith("92:") for node_id in converted)
    assert sorted(converted) == sorted(
        ["76", "9"]
        + [
            f"75:{i}"
            for i in (61, 62, 63, 64, 65, 66, 70, 71, 72, 73, 74, 80, 82, 99, 123, 124, 125)
        ]
    )


def test_links_are_resolved_through_subgraph_inputs_and_outputs(converted: dict[str, Any]) -> None:
    assert converted["9"]["inputs"]["images"] == ["75:65", 0]  # subgraph output -> VAEDecode
    assert converted["75:80"]["inputs"]["image"] == ["76", 0]  # subgraph input -> LoadImage
    assert converted["75:63"]["inputs"]["positive"] == ["75:125", 0]  # inside the subgraph


def test_promoted_widgets_of_the_subgraph_node_feed_inner_inputs(
    converted: dict[str, Any],
) -> None:
    assert converted["75:70"]["inputs"]["unet_name"] == "flux-2-klein-9b-fp8.safetensors"
    assert converted["75:72"]["inputs"]["vae_name"] == "full_encoder_small_decoder.safetensors"
    assert converted["75:73"]["inputs"]["noise_seed"] == 26416064315367
    assert converted["75:74"]["inputs"]["text"].startswith("Replace the background")


def test_widgets_map_to_input_names_in_input_order(converted: dict[str, Any]) -> None:
    assert converted["75:80"]["inputs"] == {
        "upscale_method": "nearest-exact",
        "megapixels": 1,
        "resolution_steps": 1,
        "image": ["76", 0],
    }
    assert converted["75:71"]["inputs"] == {
        "clip_name": "qwen_3_8b_fp8mixed.safetensors",
        "type": "flux2",
        "device": "default",
    }


def test_control_after_generate_takes_a_widget_slot_that_is_no_input(
    object_info: dict[str, Any],
) -> None:
    node = {"type": "KSampler", "widgets_values": [7, "randomize", 20, 8, "euler", "normal", 1]}
    specs = ui_to_api.input_specs(object_info["KSampler"])
    values = {k: v.value for k, v in ui_to_api.widget_sources(node, specs).items()}
    assert values == {
        "seed": 7,
        "steps": 20,
        "cfg": 8,
        "sampler_name": "euler",
        "scheduler": "normal",
        "denoise": 1,
    }


def test_link_from_a_bypassed_node_into_an_active_one_is_refused(
    object_info: dict[str, Any],
) -> None:
    ui = copy.deepcopy(load_json(TEMPLATE))
    next(n for n in ui["nodes"] if n["id"] == 76)["mode"] = 4
    with pytest.raises(ValueError, match="node 76 is bypassed but feeds an active node"):
        ui_to_api.convert(ui, object_info)


def test_unknown_node_type_is_refused(object_info: dict[str, Any]) -> None:
    ui = copy.deepcopy(load_json(TEMPLATE))
    next(n for n in ui["nodes"] if n["id"] == 9)["type"] = "SaveImag"
    with pytest.raises(ValueError, match="node 9: unknown type 'SaveImag'"):
        ui_to_api.convert(ui, object_info)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("75:73.noise_seed=0", ("75:73", "noise_seed", 0)),
        ("75:63.cfg=1.5", ("75:63", "cfg", 1.5)),
        ("9.filename_prefix=klein/output", ("9", "filename_prefix", "klein/output")),
        ('9.filename_prefix="42"', ("9", "filename_prefix", "42")),
    ],
)
def test_override_values_are_json_when_they_parse_else_strings(
    text: str, expected: tuple[str, str, Any]
) -> None:
    assert ui_to_api.parse_override(text) == expected


@pytest.mark.parametrize("text", ["noise_seed=0", "75:73.noise_seed", ".x=1"])
def test_malformed_override_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"NODE\.INPUT=VALUE"):
        ui_to_api.parse_override(text)


def test_override_of_an_absent_input_is_refused(converted: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"75:72\.vae is not in the graph"):
        ui_to_api.apply_overrides(converted, [("75:72", "vae", "x.safetensors")])


def test_overrides_leave_the_input_graph_unchanged(converted: dict[str, Any]) -> None:
    before = copy.deepcopy(converted)
    ui_to_api.apply_overrides(converted, KLEIN_OVERRIDES)
    assert converted == before
