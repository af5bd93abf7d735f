"""Every step of a job raising once, with an exception nobody planned for: the job still ends
(completed, or failed with a message) within two lease lengths, no RunPod job is left running
unrecorded, and the orchestrator keeps serving. Real PostgreSQL, the local RunPod endpoint, the
OpenRouter fake; the faults are injected into what the orchestrator is given."""

import asyncio
from dataclasses import replace

import httpx
import pytest
from PIL import Image

from tests.integration.faultkit import (
    EXCEPTIONS,
    Fault,
    FaultyDatabase,
    FaultyProxy,
    running,
    until_finished,
)
from tests.integration.flowkit import ScriptedWorker, insert, png_b64

KOREAN = "배경을 해변으로 바꿔줘"
LEASE_S = 3.0
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}

# step -> where its fault goes: a named query of the database, or a client's method.
STEPS = {
    "claim": ("db", "claim_jobs"),
    "translate": ("openrouter", "translate"),
    "submit": ("runpod", "run"),
    "record": ("db", "record_submission"),
    "poll": ("runpod", "peek"),  # a poll reads at most 64 KB; an output is read by `status`
    "decode": ("pillow", "open"),
    "store": ("storage", "put_png"),
    "title": ("openrouter", "title"),
    "finalize": ("db", "complete_job"),
}


def inject(step, fault, db, monkeypatch):
    """Place the fault; returns the `wrap` that running() applies to the flow's clients."""
    kind, name = STEPS[step]
    if kind == "db":
        db.before[name] = fault
        return None
    if kind == "pillow":
        real_open = Image.open

        def tripping_open(*args, **kwargs):
            fault.trip()
            return real_open(*args, **kwargs)

        monkeypatch.setattr(Image, "open", tripping_open)
        return None
    return lambda deps: replace(deps, **{kind: FaultyProxy(getattr(deps, kind), {name: fault})})


def runpod_statuses(endpoint, runpod_ids):
    """RunPod's status of each job id, through its own API."""
    with httpx.Client(timeout=5) as client:
        return {i: client.get(f"{endpoint.url}/status/{i}").json()["status"] for i in runpod_ids}


@pytest.mark.timeout(40)
@pytest.mark.parametrize("exception", list(EXCEPTIONS))
@pytest.mark.parametrize("step", list(STEPS))
def test_a_fault_at_any_step_still_ends_the_job_and_the_service_goes_on(
    step, exception, migrated_url, endpoint_for, openrouter_server, tmp_path, monkeypatch
):
    worker = ScriptedWorker()
    endpoint = endpoint_for(worker)
    fault = Fault(EXCEPTIONS[exception])
    db = FaultyDatabase(migrated_url)
    wrap = inject(step, fault, db, monkeypatch)

    async def scenario():
        async with running(
            migrated_url, endpoint, openrouter_server, tmp_path, db=db, wrap=wrap, lease_s=LEASE_S
        ) as orchestrator:
            job_id, _ = insert(migrated_url, {"prompt": KOREAN, "image_base64": png_b64()})
            orchestrator.nudge()
            first, took_s = await until_finished(migrated_url, job_id, timeout_s=2 * LEASE_S)
            job_id, _ = insert(migrated_url, {"prompt": KOREAN, "image_base64": png_b64()})
            orchestrator.nudge()
            second, _ = await until_finished(migrated_url, job_id, timeout_s=2 * LEASE_S)
        return first, second, took_s

    first, second, took_s = asyncio.run(scenario())
    assert fault.left == 0, f"the {step} fault never fired"
    assert took_s < 2 * LEASE_S
    if first["status"] == "failed":
        assert first["error_message"], "a failed work says why"
    else:
        assert (first["status"], first["work_status"]) == ("completed", "completed")
    assert (second["status"], second["work_status"]) == ("completed", "completed")
    recorded = {first["runpod_job_id"], second["runpod_job_id"]}
    strays = [i for i in worker.job_ids if i not in recorded]
    assert all(s in TERMINAL for s in runpod_statuses(endpoint, strays).values())
