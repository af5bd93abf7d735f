"""Progress users can see: RunPod's /status (a queued job, the handler's progress reports, hostile
outputs) recorded on works.progress while the job waits, fenced by the lease, and cleared when
the job ends. Real PostgreSQL; RunPod's client API played by a protocol-level server."""

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from handler.run_state import Phase, RunState, progress_payload
from orchestrator.deps import FlowDeps
from orchestrator.flow import run_job
from orchestrator.jobs import Outcome
from orchestrator.outcomes import cancel
from orchestrator.outputs import JobWake
from tests.fakes.runpod import RunPodStatusServer
from tests.integration.flowkit import claim, flow_deps, insert, png_b64

WAIT_S = 10.0
DONE = {"image": png_b64(), "seed": 1, "prompt_id": "p", "width": 320, "height": 240}
SHAPE_KEYS = {"stage", "node", "step", "steps", "at"}


def work_row(url: str, work_id: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT status, progress FROM works WHERE id = %s", (work_id,))
        row = cur.fetchone()
    assert row is not None
    return row


async def seen(runpod: RunPodStatusServer, url: str, work_id: str) -> dict[str, Any] | None:
    """The work's progress once the orchestrator has acted on the current /status body. A body
    over 64 KB is asked for twice per poll (a peek, then the read in an output slot: see
    orchestrator/outputs.py), so three answers mean at least one poll was acted on."""
    await asyncio.to_thread(runpod.wait_served, 3)
    return work_row(url, work_id)["progress"]


def assert_shape(progress: dict[str, Any] | None) -> dict[str, Any]:
    assert progress is not None
    assert set(progress) == SHAPE_KEYS
    at = datetime.fromisoformat(progress["at"])
    assert progress["at"].endswith("Z")
    assert abs(datetime.now(UTC) - at) < timedelta(minutes=1)
    return {key: value for key, value in progress.items() if key != "at"}


async def scenario(
    url, openrouter_server, tmp_path, steps: Callable[[RunPodStatusServer, str, Any], Any]
) -> tuple[Outcome, Any]:
    """Run one job against the status server while `steps(runpod, work_id, job_task)` plays
    /status bodies; the job's outcome and what `steps` returned."""
    job_id, work_id = insert(url, {"prompt": "make it red", "image_base64": png_b64()})
    with RunPodStatusServer() as runpod:
        async with flow_deps(
            url, runpod, openrouter_server, tmp_path, progress_write_interval_s=0
        ) as deps:
            task = asyncio.create_task(_run(deps, job_id))
            result = await steps(runpod, work_id, task)
            outcome = await asyncio.wait_for(task, WAIT_S)
    return outcome, result


async def _run(deps: FlowDeps, job_id: str) -> Outcome:
    return await run_job(await claim(deps, job_id), deps, JobWake())


def test_progress_is_recorded_while_the_job_waits_on_runpod(
    migrated_url, openrouter_server, tmp_path
):
    sampling = RunState("p", phase=Phase.RUNNING, node="13", step=2, steps=4)
    report = progress_payload(sampling, {"13": "SamplerCustomAdvanced"})

    async def steps(runpod, work_id, task):
        queued = await seen(runpod, migrated_url, work_id)
        runpod.answer({"status": "IN_PROGRESS", "output": report})
        running = await seen(runpod, migrated_url, work_id)
        runpod.answer({"status": "COMPLETED", "output": DONE})
        return queued, running

    outcome, (queued, running) = asyncio.run(
        scenario(migrated_url, openrouter_server, tmp_path, steps)
    )
    assert assert_shape(queued) == {
        "stage": "queued on RunPod",
        "node": None,
        "step": None,
        "steps": None,
    }
    assert assert_shape(running) == {
        "stage": "sampling",
        "node": "SamplerCustomAdvanced",
        "step": 2,
        "steps": 4,
    }
    assert outcome is Outcome.COMPLETED


def test_progress_is_cleared_when_the_job_completes(migrated_url, openrouter_server, tmp_path):
    work_ids = []

    async def steps(runpod, work_id, task):
        work_ids.append(work_id)
        runpod.answer({"status": "IN_PROGRESS", "output": {"stage": "decoding"}})
        assert (await seen(runpod, migrated_url, work_id))["stage"] == "decoding"
        runpod.answer({"status": "COMPLETED", "output": DONE})

    outcome, _ = asyncio.run(scenario(migrated_url, openrouter_server, tmp_path, steps))
    assert outcome is Outcome.COMPLETED
    assert work_row(migrated_url, work_ids[0]) == {"status": "completed", "progress": None}


def test_progress_is_cleared_when_the_job_fails(migrated_url, openrouter_server, tmp_path):
    work_ids = []

    async def steps(runpod, work_id, task):
        work_ids.append(work_id)
        runpod.answer({"status": "IN_PROGRESS", "output": {"stage": "sampling"}})
        assert (await seen(runpod, migrated_url, work_id))["stage"] == "sampling"
        runpod.answer({"status": "FAILED", "error": "Processing failed: KSampler: out of memory"})

    outcome, _ = asyncio.run(scenario(migrated_url, openrouter_server, tmp_path, steps))
    assert outcome is Outcome.FAILED
    assert work_row(migrated_url, work_ids[0]) == {"status": "failed", "progress": None}


HOSTILE_BODIES: list[dict[str, Any] | bytes] = [
    {"status": "IN_PROGRESS", "output": "x" * 3_000_000},
    {"status": "IN_PROGRESS", "output": {"stage": ["a"], "node": 7, "step": "2", "steps": True}},
    {"status": "IN_PROGRESS", "output": {"stage": "s" * 100_000, "node": "n" * 100_000}},
    {"status": "IN_PROGRESS", "output": {"stage": "sampling\u0000", "step": 9, "steps": 4}},
    {"status": "IN_PROGRESS", "output": [[[]]]},
    b'{"status": "IN_PROGRESS", "output": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
]


def test_hostile_status_outputs_are_recorded_as_running_and_the_job_completes(
    migrated_url, openrouter_server, tmp_path
):
    async def steps(runpod, work_id, task):
        recorded = []
        for body in HOSTILE_BODIES:
            runpod.answer(body)
            recorded.append(assert_shape(await seen(runpod, migrated_url, work_id)))
            assert not task.done()
        runpod.answer({"status": "COMPLETED", "output": DONE})
        return recorded

    outcome, recorded = asyncio.run(scenario(migrated_url, openrouter_server, tmp_path, steps))
    running = {"stage": "running", "node": None, "step": None, "steps": None}
    assert recorded[:5] == [running] * 5
    assert outcome is Outcome.COMPLETED


def test_only_the_jobs_holder_records_its_progress(migrated_url, openrouter_server, tmp_path):
    job_id, work_id = insert(migrated_url, {"prompt": "x", "image_base64": png_b64()})
    progress = {"stage": "sampling", "node": None, "step": None, "steps": None, "at": "x"}

    async def main() -> tuple[Any, Any]:
        with RunPodStatusServer() as runpod:
            async with flow_deps(migrated_url, runpod, openrouter_server, tmp_path) as deps:
                await claim(deps, job_id)
                other = await deps.db.one(
                    "record_progress", job_id=job_id, worker_id="w2", progress=progress
                )
                mine = await deps.db.one(
                    "record_progress", job_id=job_id, worker_id="w1", progress=progress
                )
        return other, mine

    other, mine = asyncio.run(main())
    assert other is None
    assert mine is not None
    assert work_row(migrated_url, work_id)["progress"] == json.loads(json.dumps(progress))


def test_progress_is_cleared_when_the_work_is_cancelled(migrated_url, openrouter_server, tmp_path):
    job_id, work_id = insert(migrated_url, {"prompt": "x", "image_base64": png_b64()})
    progress = {"stage": "sampling", "node": None, "step": 1, "steps": 4, "at": "x"}

    async def main() -> Outcome:
        with RunPodStatusServer() as runpod:
            async with flow_deps(migrated_url, runpod, openrouter_server, tmp_path) as deps:
                job = await claim(deps, job_id)
                await deps.db.one(
                    "record_progress", job_id=job_id, worker_id="w1", progress=progress
                )
                assert work_row(migrated_url, work_id)["progress"] is not None
                return await cancel(job, deps)

    assert asyncio.run(main()) is Outcome.CANCELLED
    assert work_row(migrated_url, work_id) == {"status": "cancelled", "progress": None}
