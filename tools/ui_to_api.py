"""Convert a ComfyUI UI-format workflow (what the frontend saves) into the API format.

The API format is what `POST /prompt` takes: node id -> {"inputs", "class_type", "_meta"}.
Subgraphs are flattened the way ComfyUI's own export does it (inner node 61 of subgraph node 75
becomes "75:61"); muted, bypassed and note nodes are dropped, and so is every node that no output
node depends on (ComfyUI would not run it). Widget values are named through object_info's
input order. `comfy_workflows/flux2_klein_9b_i2i.json` was made with:

    .venv/bin/python tools/ui_to_api.py \
        devtools/comfy_recordings/templates/image_flux2_klein_image_edit_9b_distilled.json \
        devtools/comfy_recordings/object_info.json \
        --set 75:72.vae_name=flux2-vae.safetensors \
        --set 75:73.noise_seed=0 \
        --set 9.filename_prefix=klein/output \
        --output comfy_workflows/flux2_klein_9b_i2i.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handler.graph_check import WIDGET_TYPES, input_specs, is_widget, spec_options

Json = Any

SUBGRAPH_INPUT_ID = -10  # the pseudo node that stands for a subgraph's inputs
SUBGRAPH_OUTPUT_ID = -20  # the pseudo node that stands for a subgraph's outputs
SKIPPED_MODES = {2: "muted", 4: "bypassed"}
UI_ONLY_TYPES = frozenset({"Note", "MarkdownNote"})
# Options that give a widget a second, UI-only value slot in widgets_values.
EXTRA_SLOT_OPTIONS = ("control_after_generate", "image_upload")


@dataclass(frozen=True)
class Link:
    """One edge of a UI graph: origin node and output slot to target node and input slot."""

    origin_id: int
    origin_slot: int
    target_id: int
    target_slot: int


@dataclass(frozen=True)
class Ref:
    """An input fed by output `slot` of node `node_id` of the flat API graph."""

    node_id: str
    slot: int


@dataclass(frozen=True)
class Literal:
    """An input given a literal (widget) value."""

    value: Json


@dataclass(frozen=True)
class Scope:
    """One graph level: the top graph, or the inside of one subgraph node instance."""

    prefix: str
    nodes: Mapping[int, Json]
    links: Mapping[int, Link]
    subgraphs: Mapping[str, Json]
    instance: Json = None  # the subgraph node this scope is the inside of
    definition: Json = None  # that node's subgraph definition
    parent: Scope | None = None


# --- reading the UI format ---------------------------------------------------------------------


def parse_links(raw: Iterable[Json]) -> dict[int, Link]:
    """Index links by id; the top graph stores them as lists, subgraphs as objects."""
    links: dict[int, Link] = {}
    for item in raw:
        if isinstance(item, dict):
            fields = [
                item[k] for k in ("id", "origin_id", "origin_slot", "target_id", "target_slot")
            ]
        else:
            fields = list(item[:5])
        links[int(fields[0])] = Link(*(int(f) for f in fields[1:]))
    return links


def root_scope(ui: Mapping[str, Json]) -> Scope:
    """The top level of a UI workflow, with its subgraph definitions by id."""
    definitions = ui.get("definitions", {}).get("subgraphs", [])
    return Scope(
        prefix="",
        nodes={int(node["id"]): node for node in ui["nodes"]},
        links=parse_links(ui.get("links", [])),
        subgraphs={sg["id"]: sg for sg in definitions},
    )


def child_scope(scope: Scope, instance: Json) -> Scope:
    """The inside of subgraph node `instance`; its node ids get the instance id as prefix."""
    definition = scope.subgraphs[instance["type"]]
    return Scope(
        prefix=f"{scope.prefix}{instance['id']}:",
        nodes={int(node["id"]): node for node in definition["nodes"]},
        links=parse_links(definition.get("links", [])),
        subgraphs=scope.subgraphs,
        instance=instance,
        definition=definition,
        parent=scope,
    )


def promoted_widget_values(instance: Json, definition: Json) -> dict[str, Json]:
    """A subgraph node's own widget values, named by the widget-typed subgraph inputs in order."""
    names = [item["name"] for item in definition["inputs"] if item.get("type") in WIDGET_TYPES]
    return dict(zip(names, instance.get("widgets_values") or [], strict=False))


# --- following links through subgraph boundaries -----------------------------------------------


def resolve(scope: Scope, link: Link) -> Ref | Literal:
    """Follow a link to the flat node output (or literal value) that really feeds it."""
    if link.origin_id == SUBGRAPH_INPUT_ID:
        return _from_subgraph_input(scope, link.origin_slot)
    origin = scope.nodes.get(link.origin_id)
    if origin is None:
        raise ValueError(f"a link comes from missing node {scope.prefix}{link.origin_id}")
    if origin.get("mode", 0) in SKIPPED_MODES:
        mode = SKIPPED_MODES[origin["mode"]]
        raise ValueError(f"node {scope.prefix}{origin['id']} is {mode} but feeds an active node")
    if origin["type"] in scope.subgraphs:
        return _from_subgraph_output(child_scope(scope, origin), link.origin_slot)
    return Ref(f"{scope.prefix}{origin['id']}", link.origin_slot)


def _from_subgraph_input(scope: Scope, slot: int) -> Ref | Literal:
    if scope.parent is None:
        raise ValueError("a top-level link starts at a subgraph input")
    name = scope.definition["inputs"][slot]["name"]
    outer = next((i for i in scope.instance.get("inputs", []) if i["name"] == name), None)
    if outer is not None and outer.get("link") is not None:
        return resolve(scope.parent, scope.parent.links[outer["link"]])
    values = promoted_widget_values(scope.instance, scope.definition)
    if name not in values:
        raise ValueError(f"subgraph input {name!r} of node {scope.prefix[:-1]} has no source")
    return Literal(values[name])


def _from_subgraph_output(inner: Scope, slot: int) -> Ref | Literal:
    for link in inner.links.values():
        if link.target_id == SUBGRAPH_OUTPUT_ID and link.target_slot == slot:
            return resolve(inner, link)
    raise ValueError(f"output {slot} of subgraph node {inner.prefix[:-1]} is not connected")


# --- building API nodes ------------------------------------------------------------------------


def widget_sources(node: Json, specs: Mapping[str, list[Json]]) -> dict[str, Ref | Literal]:
    """Name a node's widgets_values by the widget inputs of its type, in input order."""
    values = node.get("widgets_values") or []
    if isinstance(values, dict):
        return {name: Literal(value) for name, value in values.items() if name in specs}
    named: dict[str, Ref | Literal] = {}
    slot = 0
    for name, spec in specs.items():
        if not is_widget(spec) or slot >= len(values):
            continue
        named[name] = Literal(values[slot])
        options = spec_options(spec)
        slot += 1 + sum(1 for option in EXTRA_SLOT_OPTIONS if options.get(option))
    return named


def api_node(scope: Scope, node: Json, object_info: Mapping[str, Json]) -> dict[str, Json]:
    """One node in API form: widget inputs first, then links, the order ComfyUI exports."""
    definition = object_info[node["type"]]
    specs = input_specs(definition)
    sources = widget_sources(node, specs)
    for item in node.get("inputs", []):
        if item.get("link") is not None:
            sources[item["name"]] = resolve(scope, scope.links[item["link"]])
    order = [n for n in specs if is_widget(specs[n])] + [
        n for n in specs if not is_widget(specs[n])
    ]
    inputs = {name: _api_value(sources[name]) for name in order if name in sources}
    title = node.get("title") or definition.get("display_name") or node["type"]
    return {"inputs": inputs, "class_type": node["type"], "_meta": {"title": title}}


def _api_value(source: Ref | Literal) -> Json:
    return [source.node_id, source.slot] if isinstance(source, Ref) else source.value


def flatten(scope: Scope, object_info: Mapping[str, Json]) -> Iterator[tuple[str, dict[str, Json]]]:
    """Every active node of the scope and of the subgraphs inside it, as (API id, API node)."""
    # Top level in file order, subgraph insides by id: the order of ComfyUI's own export.
    nodes = (
        scope.nodes.values()
        if scope.parent is None
        else sorted(scope.nodes.values(), key=lambda n: int(n["id"]))
    )
    for node in nodes:
        if node.get("mode", 0) in SKIPPED_MODES or node["type"] in UI_ONLY_TYPES:
            continue
        if node["type"] in scope.subgraphs:
            yield from flatten(child_scope(scope, node), object_info)
        elif node["type"] in object_info:
            yield f"{scope.prefix}{node['id']}", api_node(scope, node, object_info)
        else:
            raise ValueError(f"node {scope.prefix}{node['id']}: unknown type {node['type']!r}")


def prune(graph: Mapping[str, Json], object_info: Mapping[str, Json]) -> dict[str, Json]:
    """Keep only the output nodes and what they depend on, in the original order."""
    pending = [i for i, n in graph.items() if object_info[n["class_type"]].get("output_node")]
    needed: set[str] = set()
    while pending:
        node_id = pending.pop()
        if node_id in needed:
            continue
        needed.add(node_id)
        for value in graph[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                pending.append(value[0])
    return {node_id: node for node_id, node in graph.items() if node_id in needed}


def convert(ui: Mapping[str, Json], object_info: Mapping[str, Json]) -> dict[str, Json]:
    """The API-format graph of a UI-format workflow."""
    return prune(dict(flatten(root_scope(ui), object_info)), object_info)


# --- overrides and the command line ------------------------------------------------------------


def parse_override(text: str) -> tuple[str, str, Json]:
    """`NODE.INPUT=VALUE` -> (node, input, value); VALUE is JSON when it parses, else a string."""
    target, equals, raw = text.partition("=")
    node_id, _, name = target.rpartition(".")
    if not (node_id and name and equals):
        raise ValueError(f"override {text!r} is not NODE.INPUT=VALUE")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, name, value


def apply_overrides(
    graph: Mapping[str, Json], overrides: Iterable[tuple[str, str, Json]]
) -> dict[str, Json]:
    """A copy of the graph with existing inputs replaced; an unknown node or input is an error."""
    result = copy.deepcopy(dict(graph))
    for node_id, name, value in overrides:
        if name not in result.get(node_id, {}).get("inputs", {}):
            raise ValueError(f"override target {node_id}.{name} is not in the graph")
        result[node_id]["inputs"][name] = value
    return result


def main(argv: list[str] | None = None) -> int:
    """Command line: convert a UI workflow file, apply --set overrides, write the API graph."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workflow", type=Path, help="UI-format workflow JSON")
    parser.add_argument("object_info", type=Path, help="GET /object_info answer (JSON)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        type=parse_override,
    )
    parser.add_argument("--output", type=Path, help="file to write (default: stdout)")
    args = parser.parse_args(argv)
    ui = json.loads(args.workflow.read_text(encoding="utf-8"))
    object_info = json.loads(args.object_info.read_text(encoding="utf-8"))
    graph = apply_overrides(convert(ui, object_info), args.overrides)
    text = json.dumps(graph, indent=2, ensure_ascii=False) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
