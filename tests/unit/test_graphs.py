"""Every graph in comfy_workflows/ is one ComfyUI would accept, and its bindings fit it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handler.graph_check import check_bindings, check_graph, load_json

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "comfy_workflows"
OBJECT_INFO = ROOT / "devtools" / "comfy_recordings" / "object_info.json"
GRAPH_FILES = sorted(
    path for path in WORKFLOWS.glob("*.json") if not path.name.endswith(".bindings.json")
)
KLEIN = WORKFLOWS / "flux2_klein_9b_i2i.json"

# What each handler parameter must find at its binding target before it is applied.
PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "image": (str,),
    "prompt": (str,),
    "seed": (int,),
    "steps": (int,),
    "cfg": (int, float),
    "megapixels": (int, float),
    "filename_prefix": (str,),
}

Graph = dict[str, Any]


@pytest.fixture(scope="module")
def object_info() -> dict[str, Any]:
    return load_json(OBJECT_INFO)


@pytest.fixture
def klein() -> Graph:
    return load_json(KLEIN)


def bindings_of(graph_path: Path) -> dict[str, Any]:
    return load_json(graph_path.with_name(graph_path.stem + ".bindings.json"))


def test_the_folder_holds_the_klein_and_smoke_graphs() -> None:
    assert {path.name for path in GRAPH_FILES} >= {"flux2_klein_9b_i2i.json", "smoke_scale.json"}


@pytest.mark.parametrize("path", GRAPH_FILES, ids=lambda path: path.stem)
def test_graph_passes_check_against_recorded_object_info(
    path: Path, object_info: dict[str, Any]
) -> None:
    assert check_graph(load_json(path), object_info) == []


@pytest.mark.parametrize("path", GRAPH_FILES, ids=lambda path: path.stem)
def test_graph_has_bindings_that_name_it_and_pass_check(path: Path) -> None:
    bindings = bindings_of(path)
    assert bindings["graph"] == path.name
    assert check_bindings(load_json(path), bindings) == []


@pytest.mark.parametrize("path", GRAPH_FILES, ids=lambda path: path.stem)
def test_binding_targets_hold_values_of_the_parameter_type(path: Path) -> None:
    graph = load_json(path)
    for parameter, targets in bindings_of(path)["bindings"].items():
        for target in targets:
            value = graph[target["node"]]["inputs"][target["input"]]
            assert isinstance(value, PARAMETER_TYPES[parameter]), (parameter, value)
            assert not isinstance(value, bool), (parameter, value)


def test_klein_bindings_reach_the_documented_nodes(klein: Graph) -> None:
    targets = {
        name: (klein[t[0]["node"]]["class_type"], t[0]["input"])
        for name, t in bindings_of(KLEIN)["bindings"].items()
    }
    assert targets == {
        "image": ("LoadImage", "image"),
        "prompt": ("CLIPTextEncode", "text"),
        "seed": ("RandomNoise", "noise_seed"),
        "steps": ("Flux2Scheduler", "steps"),
        "cfg": ("CFGGuider", "cfg"),
        "megapixels": ("ImageScaleToTotalPixels", "megapixels"),
        "filename_prefix": ("SaveImage", "filename_prefix"),
    }


def test_smoke_graph_binds_only_what_it_can_apply() -> None:
    bound = set(bindings_of(WORKFLOWS / "smoke_scale.json")["bindings"])
    assert bound == {"image", "megapixels", "filename_prefix"}


# --- broken copies of the Klein graph fail, naming the problem -----------------------------------


def set_input(node: str, name: str, value: Any) -> Callable[[Graph], None]:
    def mutate(graph: Graph) -> None:
        graph[node]["inputs"][name] = value

    return mutate


def set_class(node: str, class_type: str) -> Callable[[Graph], None]:
    def mutate(graph: Graph) -> None:
        graph[node]["class_type"] = class_type

    return mutate


def drop_input(node: str, name: str) -> Callable[[Graph], None]:
    def mutate(graph: Graph) -> None:
        del graph[node]["inputs"][name]

    return mutate


def drop_node(node: str) -> Callable[[Graph], None]:
    def mutate(graph: Graph) -> None:
        del graph[node]

    return mutate


BROKEN = [
    pytest.param(set_class("75:70", "UNETLoadr"), "unknown node type 'UNETLoadr'", id="class-typo"),
    pytest.param(drop_input("75:62", "steps"), "missing required input 'steps'", id="no-steps"),
    pytest.param(drop_input("9", "images"), "missing required input 'images'", id="no-link"),
    pytest.param(set_input("75:65", "vae", ["999", 0]), "missing or unknown node '999'", id="gone"),
    pytest.param(
        set_input("75:65", "vae", ["75:70", 0]),
        "input 'vae' expects VAE but node 75:70 output 0 gives MODEL",
        id="wrong-type",
    ),
    pytest.param(set_input("75:65", "vae", ["75:72", 3]), "links to output 3", id="no-output"),
    pytest.param(set_input("75:61", "sampler_name", "eulr"), "'eulr' not in its list", id="combo"),
    pytest.param(set_input("75:71", "type", "flux3"), "'flux3' not in its list", id="list-combo"),
    pytest.param(set_input("75:62", "steps", 0), "'steps' value 0 is below minimum 1", id="min"),
    pytest.param(set_input("75:63", "cfg", 101), "'cfg' value 101 is above maximum", id="max"),
    pytest.param(set_input("75:62", "steps", 4.5), "'steps' must be INT", id="int"),
    pytest.param(set_input("75:62", "steps", True), "'steps' must be INT", id="bool-as-int"),
    pytest.param(set_input("75:74", "text", 5), "'text' must be STRING", id="string"),
    pytest.param(set_input("75:70", "unet_name", "klein.txt"), "must name a model file", id="file"),
    pytest.param(set_input("76", "image", ""), "'image' must be a file name", id="image-name"),
    pytest.param(
        set_input("75:65", "vae", "flux2-vae"), "'vae' of type VAE needs a link", id="lit"
    ),
    pytest.param(set_input("75:62", "stepz", 4), "unknown input 'stepz'", id="unknown-input"),
    pytest.param(drop_node("9"), "graph has no output node", id="no-save-image"),
]


@pytest.mark.parametrize(("mutate", "expected"), BROKEN)
def test_broken_klein_graph_fails_naming_the_problem(
    klein: Graph, object_info: dict[str, Any], mutate: Callable[[Graph], None], expected: str
) -> None:
    mutate(klein)
    problems = check_graph(klein, object_info)
    assert any(expected in problem for problem in problems), problems


def test_problems_name_the_node_and_its_type(klein: Graph, object_info: dict[str, Any]) -> None:
    set_input("75:62", "steps", 0)(klein)
    assert check_graph(klein, object_info) == [
        "node 75:62 (Flux2Scheduler): input 'steps' value 0 is below minimum 1"
    ]


@pytest.mark.parametrize(
    ("node", "name", "value"),
    [
        ("75:72", "vae_name", "full_encoder_small_decoder.safetensors"),
        ("75:70", "unet_name", "other-model.sft"),
        ("75:71", "clip_name", "encoder.bin"),
        ("76", "image", "job-1234_input.webp"),
    ],
)
def test_file_list_inputs_accept_files_the_recorded_server_lacked(
    klein: Graph, object_info: dict[str, Any], node: str, name: str, value: str
) -> None:
    set_input(node, name, value)(klein)
    assert check_graph(klein, object_info) == []


def test_any_type_input_accepts_any_output(klein: Graph, object_info: dict[str, Any]) -> None:
    klein["500"] = {"class_type": "PreviewAny", "inputs": {"source": ["75:70", 0]}}
    assert check_graph(klein, object_info) == []


def test_int_output_feeds_int_widget_input(klein: Graph, object_info: dict[str, Any]) -> None:
    assert klein["75:62"]["inputs"]["width"] == ["75:99", 0]
    set_input("75:62", "width", ["75:99", 2])(klein)  # batch_size, still INT
    assert check_graph(klein, object_info) == []


# --- broken bindings fail, naming the problem -----------------------------------------------------


def klein_bindings() -> dict[str, Any]:
    return copy.deepcopy(bindings_of(KLEIN))


def with_output_node(node: str) -> dict[str, Any]:
    bindings = klein_bindings()
    bindings["output_node"] = node
    return bindings


def with_binding(parameter: str, targets: Any) -> dict[str, Any]:
    bindings = klein_bindings()
    bindings["bindings"][parameter] = targets
    return bindings


def without_binding(parameter: str) -> dict[str, Any]:
    bindings = klein_bindings()
    del bindings["bindings"][parameter]
    return bindings


BROKEN_BINDINGS = [
    pytest.param(with_output_node("42"), "output_node '42' is not a node", id="no-output-node"),
    pytest.param(with_output_node("75:65"), "is a VAEDecode, not a SaveImage", id="not-save"),
    pytest.param(without_binding("image"), "required parameter 'image'", id="no-image"),
    pytest.param(
        without_binding("filename_prefix"), "required parameter 'filename_prefix'", id="no-prefix"
    ),
    pytest.param(
        with_binding("steps", [{"node": "75:99", "input": "steps"}]),
        "'steps' targets node 75:99 (GetImageSize), which has no input 'steps'",
        id="no-such-input",
    ),
    pytest.param(
        with_binding("seed", [{"node": "75:7", "input": "noise_seed"}]),
        "'seed' targets missing node '75:7'",
        id="no-such-node",
    ),
    pytest.param(
        with_binding("image", [{"node": "9", "input": "images"}]),
        "'image' targets node 9 input 'images', which is a link",
        id="link-target",
    ),
    pytest.param(with_binding("image", [{"node": "76"}]), "needs 'node' and 'input'", id="shape"),
    pytest.param(
        with_binding("megapixel", [{"node": "75:80", "input": "megapixels"}]),
        "unknown parameter 'megapixel'",
        id="typo",
    ),
]


@pytest.mark.parametrize(("bindings", "expected"), BROKEN_BINDINGS)
def test_broken_klein_bindings_fail_naming_the_problem(
    klein: Graph, bindings: dict[str, Any], expected: str
) -> None:
    problems = check_bindings(klein, bindings)
    assert any(expected in problem for problem in problems), problems
