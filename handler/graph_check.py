"""Static checks of ComfyUI API-format graphs and their bindings against recorded node definitions.

A graph is the dict sent as `prompt` to `POST /prompt`: node id -> `{"class_type", "inputs"}`.
`object_info` is the server's `GET /object_info` answer. Every check returns human-readable
problems, so a bad graph is caught in tests instead of as a `/prompt` 400 on a paid GPU.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Json = Any
Graph = Mapping[str, Json]
ObjectInfo = Mapping[str, Json]

# Types that ComfyUI draws as widgets (literal values) rather than as link sockets.
WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})

# File-list inputs: their option lists are the files installed on the server, and the recorded
# server had none, so they are checked by file name instead of against the recorded list.
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin", ".sft")
MODEL_FILE_INPUTS = frozenset(
    {("UNETLoader", "unet_name"), ("CLIPLoader", "clip_name"), ("VAELoader", "vae_name")}
)
UPLOADED_FILE_INPUTS = frozenset({("LoadImage", "image")})  # set per job to the uploaded name

REQUIRED_BINDINGS = ("image", "filename_prefix")
KNOWN_PARAMETERS = frozenset(
    {"image", "prompt", "seed", "steps", "cfg", "megapixels", "filename_prefix"}
)


def load_json(path: Path) -> Json:
    """Read one JSON file (a graph, its bindings or object_info)."""
    return json.loads(path.read_text(encoding="utf-8"))


# --- node definitions -------------------------------------------------------------------------


def input_specs(definition: Mapping[str, Json]) -> dict[str, list[Json]]:
    """Map each required and optional input name to its spec `[type, options?]`."""
    declared = definition.get("input", {})
    specs: dict[str, list[Json]] = {}
    for section in ("required", "optional"):
        for name, spec in declared.get(section, {}).items():
            specs[name] = list(spec)
    return specs


def declared_type(spec: list[Json]) -> str:
    """The input's type name; an inline option list counts as COMBO."""
    return "COMBO" if isinstance(spec[0], list) else str(spec[0])


def spec_options(spec: list[Json]) -> dict[str, Json]:
    """The options dict of an input spec (min, max, default, options, ...), or empty."""
    return dict(spec[1]) if len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_choices(spec: list[Json]) -> list[Json]:
    """The allowed values of a COMBO input, in either of object_info's two spellings."""
    if isinstance(spec[0], list):
        return list(spec[0])
    return list(spec_options(spec).get("options", []))


def is_widget(spec: list[Json]) -> bool:
    """True when the input takes a literal value in the UI (a widget), not only a link."""
    return declared_type(spec) in WIDGET_TYPES and not spec_options(spec).get("forceInput")


def types_match(output_type: str, input_type: str) -> bool:
    """ComfyUI's link rule: equal names, `*` on either side, or a shared comma-separated member."""
    if "*" in (output_type, input_type):
        return True
    return bool(set(output_type.split(",")) & set(input_type.split(",")))


# --- graph checks ------------------------------------------------------------------------------


def check_graph(graph: Graph, object_info: ObjectInfo) -> list[str]:
    """Every problem that would make ComfyUI reject the graph; empty when it is valid."""
    outputs = _output_types(graph, object_info)
    problems: list[str] = []
    for node_id, node in graph.items():
        problems += _check_node(str(node_id), node, outputs, object_info)
    if not _has_output_node(graph, object_info):
        problems.append("graph has no output node (such as SaveImage)")
    return problems


def _output_types(graph: Graph, object_info: ObjectInfo) -> dict[str, list[str]]:
    """Node id -> the types of its outputs, for every node whose type is known."""
    return {
        str(node_id): [str(kind) for kind in object_info[node["class_type"]].get("output", [])]
        for node_id, node in graph.items()
        if isinstance(node, dict) and node.get("class_type") in object_info
    }


def _check_node(
    node_id: str, node: Json, outputs: Mapping[str, list[str]], object_info: ObjectInfo
) -> list[str]:
    if not isinstance(node, dict) or not isinstance(node.get("inputs"), dict):
        return [f"node {node_id}: not an object with 'class_type' and 'inputs'"]
    class_type = node.get("class_type")
    if not isinstance(class_type, str) or class_type not in object_info:
        return [f"node {node_id}: unknown node type {class_type!r}"]
    where = f"node {node_id} ({class_type})"
    specs = input_specs(object_info[class_type])
    required = object_info[class_type].get("input", {}).get("required", {})
    problems = [
        f"{where}: missing required input {name!r}"
        for name in required
        if name not in node["inputs"]
    ]
    for name, value in node["inputs"].items():
        if name not in specs:
            problems.append(f"{where}: unknown input {name!r}")
        elif _is_link(value):
            problems += _check_link(where, name, value, declared_type(specs[name]), outputs)
        else:
            problems += _check_value(where, (class_type, name), value, specs[name])
    return problems


def _is_link(value: Json) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _check_link(
    where: str, name: str, link: list[Json], wanted: str, outputs: Mapping[str, list[str]]
) -> list[str]:
    source_id, index = str(link[0]), link[1]
    if source_id not in outputs:
        return [f"{where}: input {name!r} links to missing or unknown node {source_id!r}"]
    given_types = outputs[source_id]
    if not 0 <= index < len(given_types):
        return [
            f"{where}: input {name!r} links to output {index} of node {source_id}, "
            f"which has {len(given_types)} outputs"
        ]
    given = given_types[index]
    if not types_match(given, wanted):
        return [
            f"{where}: input {name!r} expects {wanted} but node {source_id} "
            f"output {index} gives {given}"
        ]
    return []


def _check_value(where: str, key: tuple[str, str], value: Json, spec: list[Json]) -> list[str]:
    name, kind = key[1], declared_type(spec)
    if key in MODEL_FILE_INPUTS or (kind == "COMBO" and not combo_choices(spec)):
        return _check_model_file(where, name, value)
    if key in UPLOADED_FILE_INPUTS:
        ok = isinstance(value, str) and bool(value.strip())
        return [] if ok else [f"{where}: input {name!r} must be a file name, got {value!r}"]
    match kind:
        case "COMBO":
            ok = value in combo_choices(spec)
            return [] if ok else [f"{where}: input {name!r} value {value!r} not in its list"]
        case "INT" | "FLOAT":
            return _check_number(where, name, value, kind, spec_options(spec))
        case "STRING" | "BOOLEAN":
            ok = isinstance(value, str if kind == "STRING" else bool)
            return [] if ok else [f"{where}: input {name!r} must be {kind}, got {value!r}"]
        case _:
            return [f"{where}: input {name!r} of type {kind} needs a link, got {value!r}"]


def _check_model_file(where: str, name: str, value: Json) -> list[str]:
    if isinstance(value, str) and value.lower().endswith(MODEL_FILE_SUFFIXES):
        return []
    return [
        f"{where}: input {name!r} must name a model file "
        f"({', '.join(MODEL_FILE_SUFFIXES)}), got {value!r}"
    ]


def _check_number(
    where: str, name: str, value: Json, kind: str, options: Mapping[str, Json]
) -> list[str]:
    allowed: tuple[type, ...] = (int,) if kind == "INT" else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed):
        return [f"{where}: input {name!r} must be {kind}, got {value!r}"]
    if "min" in options and value < options["min"]:
        return [f"{where}: input {name!r} value {value} is below minimum {options['min']}"]
    if "max" in options and value > options["max"]:
        return [f"{where}: input {name!r} value {value} is above maximum {options['max']}"]
    return []


def _has_output_node(graph: Graph, object_info: ObjectInfo) -> bool:
    return any(
        isinstance(node, dict)
        and bool(object_info.get(str(node.get("class_type")), {}).get("output_node"))
        for node in graph.values()
    )


# --- binding checks ----------------------------------------------------------------------------


def check_bindings(graph: Graph, bindings: Mapping[str, Json]) -> list[str]:
    """Every problem with a bindings file: targets that do not exist, a wrong output node, gaps."""
    problems = _check_output_node(graph, bindings.get("output_node"))
    targets = bindings.get("bindings")
    if not isinstance(targets, dict):
        return [*problems, "bindings: 'bindings' must be an object of parameter -> targets"]
    problems += [
        f"bindings: required parameter {name!r} has no binding"
        for name in REQUIRED_BINDINGS
        if not targets.get(name)
    ]
    for parameter, entries in targets.items():
        problems += _check_parameter(graph, str(parameter), entries)
    return problems


def _check_output_node(graph: Graph, output_node: Json) -> list[str]:
    node = graph.get(str(output_node)) if output_node is not None else None
    if not isinstance(node, dict):
        return [f"bindings: output_node {output_node!r} is not a node of the graph"]
    if node.get("class_type") != "SaveImage":
        return [
            f"bindings: output_node {output_node!r} is a {node.get('class_type')}, not a SaveImage"
        ]
    return []


def _check_parameter(graph: Graph, parameter: str, entries: Json) -> list[str]:
    if parameter not in KNOWN_PARAMETERS:
        return [f"bindings: unknown parameter {parameter!r}"]
    if not isinstance(entries, list):
        return [f"bindings: {parameter!r} must be a list of {{node, input}} targets"]
    return [problem for entry in entries for problem in _check_target(graph, parameter, entry)]


def _check_target(graph: Graph, parameter: str, entry: Json) -> list[str]:
    if not isinstance(entry, dict) or not {"node", "input"} <= entry.keys():
        return [f"bindings: {parameter!r} target {entry!r} needs 'node' and 'input'"]
    node_id, name = str(entry["node"]), entry["input"]
    node = graph.get(node_id)
    if not isinstance(node, dict):
        return [f"bindings: {parameter!r} targets missing node {node_id!r}"]
    inputs = node.get("inputs", {})
    if name not in inputs:
        return [
            f"bindings: {parameter!r} targets node {node_id} ({node.get('class_type')}), "
            f"which has no input {name!r}"
        ]
    if _is_link(inputs[name]):
        return [f"bindings: {parameter!r} targets node {node_id} input {name!r}, which is a link"]
    return []
