"""The HTTP app in front of a database that stops answering (a server stopped with SIGSTOP, a
network cut): every answer that needs the database still comes within its deadline, and the
app recovers once the database answers again."""

import asyncio
import time
import uuid

from orchestrator.db import Database
from orchestrator.http import DB_DEADLINE_S
from tests.integration.freezekit import freezable
from tests.integration.test_http import RecordingWaker, app_client, supabase_body

MARGIN_S = 1.0


def test_readyz_says_not_ready_within_its_deadline_and_ready_again_after(migrated_url):
    async def run() -> tuple[list[int], float, int]:
        with freezable(migrated_url) as proxy:
            db = Database(proxy.url, max_size=4)
            await db.open()
            try:
                async with app_client(db, RecordingWaker()) as client:
                    assert (await client.get("/readyz")).status_code == 200
                    proxy.freeze()
                    start = time.monotonic()
                    # More probes than the pool has connections, all at once.
                    frozen = await asyncio.gather(*(client.get("/readyz") for _ in range(12)))
                    took = time.monotonic() - start
                    proxy.thaw()
                    again = await client.get("/readyz")
                    return [r.status_code for r in frozen], took, again.status_code
            finally:
                await db.close()

    codes, took, after = asyncio.run(run())
    assert codes == [503] * 12
    assert took < DB_DEADLINE_S + MARGIN_S
    assert after == 200


def test_the_intake_webhook_answers_503_within_its_deadline(migrated_url):
    async def run() -> tuple[int, float]:
        with freezable(migrated_url) as proxy:
            db = Database(proxy.url, max_size=2)
            await db.open()
            try:
                async with app_client(db, RecordingWaker()) as client:
                    proxy.freeze()
                    start = time.monotonic()
                    body = supabase_body(str(uuid.uuid4()))
                    response = await client.post("/webhook/klein_i2i", json=body)
                    took = time.monotonic() - start
                    proxy.thaw()
                    return response.status_code, took
            finally:
                await db.close()

    code, took = asyncio.run(run())
    assert code == 503
    assert took < DB_DEADLINE_S + MARGIN_S
