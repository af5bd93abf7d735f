"""Loading graphs with their bindings and writing job parameters through them."""

import json
import shutil

import pytest

from handler.config import REPO_WORKFLOWS_DIR
from handler.worker import ProgressThrottle
from handler.workflow import WorkflowError, load_workflow

VALUES = {
    "image": "klein_job-1.png",
    "prompt": "Make the sky purple",
    "seed": 1234,
    "steps": 6,
    "cfg": 2.5,
    "megapixels": 1.5,
    "filename_prefix": "klein/job-1",
}


def test_klein_bindings_write_every_parameter_where_the_template_has_it():
    workflow = load_workflow("flux2_klein_9b_i2i", REPO_WORKFLOWS_DIR)
    graph = workflow.apply(VALUES)
    by_type = {node["class_type"]: node["inputs"] for node in graph.values()}
    assert by_type["LoadImage"]["image"] == "klein_job-1.png"
    assert by_type["CLIPTextEncode"]["text"] == "Make the sky purple"
    assert by_type["RandomNoise"]["noise_seed"] == 1234
    assert by_type["Flux2Scheduler"]["steps"] == 6
    assert by_type["CFGGuider"]["cfg"] == 2.5
    assert by_type["ImageScaleToTotalPixels"]["megapixels"] == 1.5
    assert by_type["SaveImage"]["filename_prefix"] == "klein/job-1"
    assert workflow.graph[workflow.output_node]["class_type"] == "SaveImage"


def test_apply_leaves_the_loaded_graph_untouched():
    workflow = load_workflow("flux2_klein_9b_i2i", REPO_WORKFLOWS_DIR)
    before = json.dumps(workflow.graph, sort_keys=True)
    workflow.apply(VALUES)
    assert json.dumps(workflow.graph, sort_keys=True) == before


def test_smoke_graph_skips_parameters_it_has_no_binding_for():
    workflow = load_workflow("smoke_scale", REPO_WORKFLOWS_DIR)
    graph = workflow.apply(VALUES)
    assert graph["1"]["inputs"]["image"] == "klein_job-1.png"
    assert graph["2"]["inputs"]["megapixels"] == 1.5
    assert "Make the sky purple" not in json.dumps(graph)


def test_a_graph_can_be_named_by_path(tmp_path):
    for name in ("smoke_scale.json", "smoke_scale.bindings.json"):
        shutil.copy(REPO_WORKFLOWS_DIR / name, tmp_path / name)
    assert (
        load_workflow(str(tmp_path / "smoke_scale.json"), REPO_WORKFLOWS_DIR).name == "smoke_scale"
    )


def test_a_missing_workflow_is_a_clear_error(tmp_path):
    with pytest.raises(WorkflowError, match="not found"):
        load_workflow("nope", tmp_path)


def test_bindings_pointing_at_a_missing_node_are_refused(tmp_path):
    shutil.copy(REPO_WORKFLOWS_DIR / "smoke_scale.json", tmp_path / "smoke_scale.json")
    document = json.loads((REPO_WORKFLOWS_DIR / "smoke_scale.bindings.json").read_text())
    document["bindings"]["megapixels"] = [{"node": "99", "input": "megapixels"}]
    (tmp_path / "smoke_scale.bindings.json").write_text(json.dumps(document))
    with pytest.raises(WorkflowError, match="99"):
        load_workflow("smoke_scale", tmp_path)


def test_progress_throttle_passes_node_changes_and_spaces_repeats():
    now = [0.0]
    throttle = ProgressThrottle(1.0, clock=lambda: now[0])
    sampling = {"phase": "running", "node": "SamplerCustomAdvanced", "step": 1}
    assert throttle.due(sampling)
    now[0] = 0.2
    assert not throttle.due({**sampling, "step": 2})
    assert throttle.due({"phase": "running", "node": "VAEDecode"})
    now[0] = 1.5
    assert throttle.due({"phase": "running", "node": "VAEDecode"})


def test_progress_throttle_passes_a_stage_change_within_the_interval():
    now = [0.0]
    throttle = ProgressThrottle(1.0, clock=lambda: now[0])
    assert throttle.due({"stage": "preparing image", "phase": "preparing"})
    now[0] = 0.1
    assert throttle.due({"stage": "queued in ComfyUI", "phase": "queued"})
    assert not throttle.due({"stage": "queued in ComfyUI", "phase": "queued"})
