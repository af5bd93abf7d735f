"""Progress from RunPod's /status: parsing the worker's untrusted report, the write gate, and
the works.progress shape."""

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from handler.run_state import Phase, RunState, progress_payload
from orchestrator.policy import progress_due
from orchestrator.runpod import (
    NODE_MAX_CHARS,
    STAGE_MAX_CHARS,
    Progress,
    parse_progress,
    parse_status,
)

SAMPLING = {"stage": "sampling", "phase": "running", "node": "KSampler", "step": 3, "steps": 4}
SHAPE_KEYS = {"stage", "node", "step", "steps", "at"}


def test_a_queued_job_is_queued_on_runpod():
    assert parse_progress("IN_QUEUE", None) == Progress("queued on RunPod")


def test_the_handlers_report_becomes_progress():
    assert parse_progress("IN_PROGRESS", SAMPLING) == Progress("sampling", "KSampler", 3, 4)


def test_what_the_handler_sends_is_what_the_orchestrator_reads():
    state = RunState("p", phase=Phase.RUNNING, node="13", step=2, steps=4)
    report = progress_payload(state, {"13": "SamplerCustomAdvanced"})
    assert parse_progress("IN_PROGRESS", json.loads(json.dumps(report))) == Progress(
        "sampling", "SamplerCustomAdvanced", 2, 4
    )


@pytest.mark.parametrize("status", ["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "WEIRD"])
def test_other_statuses_carry_no_progress(status):
    assert parse_progress(status, SAMPLING) is None


@pytest.mark.parametrize(
    "output",
    [
        None,
        "Update 1/3",
        ["sampling"],
        12,
        {},
        {"stage": 7},
        {"stage": "x" * (STAGE_MAX_CHARS + 1)},
        {"stage": "   "},
        {"stage": "bad\x00stage"},
    ],
)
def test_a_running_job_with_no_usable_stage_is_running(output):
    assert parse_progress("IN_PROGRESS", output) == Progress("running")


@pytest.mark.parametrize(
    ("step", "steps"),
    [
        (5, 4),
        (-1, 4),
        (1, None),
        (None, 4),
        (True, 4),
        (1.5, 4),
        ("2", "4"),
        (1, 10**12),
    ],
)
def test_steps_that_do_not_add_up_are_dropped(step, steps):
    progress = parse_progress("IN_PROGRESS", SAMPLING | {"step": step, "steps": steps})
    assert progress == Progress("sampling", "KSampler", None, None)


def test_a_huge_or_odd_node_is_dropped():
    assert parse_progress("IN_PROGRESS", SAMPLING | {"node": "n" * (NODE_MAX_CHARS + 1)}) == (
        Progress("sampling", None, 3, 4)
    )
    assert parse_progress("IN_PROGRESS", SAMPLING | {"node": {"a": 1}}).node is None


def test_whitespace_in_a_stage_is_folded():
    assert parse_progress("IN_PROGRESS", {"stage": " loading \n models "}).stage == "loading models"


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=200),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=6),
        max_leaves=20,
    )
)
def test_any_output_gives_bounded_progress_or_raises_nothing(output):
    progress = parse_progress("IN_PROGRESS", output)
    assert progress is not None
    assert 0 < len(progress.stage) <= STAGE_MAX_CHARS
    assert progress.node is None or len(progress.node) <= NODE_MAX_CHARS
    assert (progress.step is None) == (progress.steps is None)


def test_a_status_body_carries_its_progress():
    body = {"id": "r1", "status": "IN_PROGRESS", "output": SAMPLING}
    assert parse_status("r1", body).progress == Progress("sampling", "KSampler", 3, 4)
    finished = parse_status("r1", {"id": "r1", "status": "COMPLETED", "output": {"image": "x"}})
    assert finished.progress is None


def test_the_recorded_shape_has_every_key_and_a_utc_time():
    at = datetime(2026, 12, 3, 15, 40, tzinfo=timezone(timedelta(hours=9)))
    recorded = Progress("queued on RunPod").as_json(at)
    assert recorded == {
        "stage": "queued on RunPod",
        "node": None,
        "step": None,
        "steps": None,
        "at": "2026-12-03T06:40:00Z",
    }
    assert set(Progress("sampling", "KSampler", 1, 4).as_json(datetime.now(UTC))) == SHAPE_KEYS


def test_the_gate_writes_news_at_most_once_per_interval():
    sampling = Progress("sampling", "KSampler", 1, 4)
    assert progress_due(sampling, None, float("inf"), 1.0)
    assert not progress_due(sampling, sampling, 5.0, 1.0)
    assert not progress_due(Progress("sampling", "KSampler", 2, 4), sampling, 0.5, 1.0)
    assert progress_due(Progress("sampling", "KSampler", 2, 4), sampling, 1.0, 1.0)


def test_the_gate_never_writes_nothing():
    assert not progress_due(None, Progress("sampling"), 10.0, 1.0)
