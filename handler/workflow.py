"""ComfyUI graphs and their bindings: which node input each job parameter goes to.

Graphs are data (`comfy_workflows/<name>.json`, API format); parameters are applied only
through the bindings file beside each graph (`<name>.bindings.json`). They ship as the package
data `handler/workflows`, a link to `comfy_workflows/` in the source tree.
"""

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from handler.graph_check import check_bindings

BINDINGS_SUFFIX = ".bindings.json"


class WorkflowError(Exception):
    """A graph or bindings file that cannot be used; the worker must not start with it."""


@dataclass(frozen=True)
class Binding:
    """One node input a parameter is written to."""

    node: str
    input: str


@dataclass(frozen=True)
class Workflow:
    """A graph, where its parameters go, and which node saves the result."""

    name: str
    graph: Mapping[str, Any]
    bindings: Mapping[str, tuple[Binding, ...]]
    output_node: str

    def node_types(self) -> dict[str, str]:
        """Node id to class_type, for readable progress and errors."""
        return {node_id: str(node["class_type"]) for node_id, node in self.graph.items()}

    def apply(self, values: Mapping[str, object]) -> dict[str, Any]:
        """A fresh copy of the graph with each bound parameter written in; unbound ones skipped."""
        graph = copy.deepcopy(dict(self.graph))
        for name, value in values.items():
            for binding in self.bindings.get(name, ()):
                graph[binding.node]["inputs"][binding.input] = value
        return graph


def packaged_workflows_dir() -> Path:
    """The graphs shipped with the handler (`comfy_workflows/` itself in an editable install)."""
    folder = resources.files("handler") / "workflows"
    if not isinstance(folder, Path):
        raise WorkflowError("the handler package is not installed as plain files")
    return folder.resolve()


def workflow_paths(name: str, directory: Path) -> tuple[Path, Path]:
    """The graph and bindings files for a workflow name (or a path to a graph file)."""
    graph_path = Path(name) if name.endswith(".json") else directory / f"{name}.json"
    return graph_path, graph_path.with_name(graph_path.stem + BINDINGS_SUFFIX)


def load_workflow(name: str, directory: Path) -> Workflow:
    """Read and check a workflow; raise WorkflowError with what is wrong."""
    graph_path, bindings_path = workflow_paths(name, directory)
    graph = _read_json(graph_path)
    document = _read_json(bindings_path)
    problems = check_bindings(graph, document)
    if problems:
        raise WorkflowError(f"{bindings_path.name}: " + "; ".join(problems))
    bindings = {
        parameter: tuple(Binding(str(t["node"]), str(t["input"])) for t in targets)
        for parameter, targets in document["bindings"].items()
    }
    return Workflow(graph_path.stem, graph, bindings, str(document["output_node"]))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(
            f"workflow file not found: {path}; set COMFY_WORKFLOWS_DIR to a folder of graphs"
        ) from None
    except (OSError, ValueError) as exc:
        raise WorkflowError(f"cannot read {path}: {exc}") from None
    if not isinstance(document, dict):
        raise WorkflowError(f"{path}: expected a JSON object")
    return document
