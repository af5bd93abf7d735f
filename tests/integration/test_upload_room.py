"""A finished output keeps its output slot (OUTPUT_SLOTS) only until it is unpacked; its upload
is bounded by MAX_UPLOADING_MB instead, so a slow Storage does not cap the pipeline at one
upload per slot. Storage is the Supabase Storage fake, answering each upload seconds late."""

import asyncio
import base64
import io
import os
from dataclasses import replace

import pytest
from PIL import Image

from orchestrator.outputs import OutputSlots
from orchestrator.uploads import UploadBudget
from tests.integration.faultkit import running, until_finished
from tests.integration.flowkit import ScriptedWorker, insert, png_b64, rows, supabase_on

UPLOAD_S = 2.0
SIDE = 256  # noise: a PNG of ~200 KB, past the 64 KB a poll reads without an output slot


def noise_output() -> dict[str, object]:
    """The worker's output: an image too large to be read outside an output slot."""
    image = Image.frombytes("RGB", (SIDE, SIDE), os.urandom(SIDE * SIDE * 3))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"image": base64.b64encode(buffer.getvalue()).decode(), "width": SIDE, "height": SIDE}


def finish_two_jobs(url, endpoint, openrouter_server, storage_server, tmp_path, **deps_changes):
    """Insert two jobs, let one orchestrator (its deps changed as given) finish both with
    every upload answered UPLOAD_S late, and return the most uploads Storage had at once."""
    job_ids = [insert(url, {"prompt": "make it red", "image_base64": png_b64()})[0] for _ in "ab"]
    storage_server.slow_next(UPLOAD_S, times=2)

    async def run():
        async with (
            supabase_on(storage_server) as storage,
            running(
                url,
                endpoint,
                openrouter_server,
                tmp_path,
                storage=storage,
                wrap=lambda deps: replace(deps, **deps_changes),
            ),
        ):
            for job_id in job_ids:
                await until_finished(url, job_id, 30)

    asyncio.run(run())
    assert [rows(url, job_id)[0]["job_status"] for job_id in job_ids] == ["completed"] * 2
    assert len(storage_server.uploads) == 2
    return storage_server.most_writing


@pytest.fixture
def most_uploads_at_once(migrated_url, endpoint_for, openrouter_server, storage_server, tmp_path):
    """`most_uploads_at_once(**deps_changes)`: finish_two_jobs on this test's database and
    fakes, the worker answering with noise_output."""

    def finish(**deps_changes):
        endpoint = endpoint_for(ScriptedWorker(noise_output()))
        return finish_two_jobs(
            migrated_url, endpoint, openrouter_server, storage_server, tmp_path, **deps_changes
        )

    return finish


def test_one_output_slot_lets_two_uploads_run_at_once(most_uploads_at_once):
    """The slot is given back once the image is unpacked: the second job's output is read and
    uploaded while the first one's upload is still waiting for Storage."""
    assert most_uploads_at_once(outputs=OutputSlots(1)) == 2


def test_the_upload_budget_bounds_the_uploads_at_once(most_uploads_at_once):
    """With room for one image only (each takes the whole budget), the second upload waits for
    the first, however many output slots are free."""
    assert most_uploads_at_once(outputs=OutputSlots(4), uploads=UploadBudget(1)) == 1
