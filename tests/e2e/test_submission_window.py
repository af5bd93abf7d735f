"""A `klein serve` killed (SIGKILL) inside the submission window: RunPod accepted `/run`, but
the process died before recording the id. With RunPod's completion webhook on, the next process
waits for that webhook and adopts the RunPod job: one GPU run. Without it, nothing can find that
job, and the next process submits again: the second GPU run this window can still cost."""

import asyncio

import httpx
import pytest
from aiohttp import web

from devtools.background_server import BackgroundServer
from tests.e2e.servekit import free_port, insert_job, wait_for, wait_for_job

ANSWER_DELAY_S = 4.0


class SlowRunAnswers(BackgroundServer):
    """RunPod's API in front of the local endpoint; `/run` reaches RunPod at once, but its answer
    comes back only after ANSWER_DELAY_S (the window a crash can fall into)."""

    thread_name = "slow-run-answers"

    def __init__(self, upstream: str) -> None:
        super().__init__()
        self.upstream = upstream.rstrip("/")

    @property
    def api_base(self) -> str:
        return f"{self.url}/v2"

    def _routes(self) -> list[web.RouteDef]:
        return [web.route("*", "/v2/{tail:.*}", self._forward)]

    async def _forward(self, request: web.Request) -> web.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            answer = await client.request(
                request.method,
                f"{self.upstream}/{request.match_info['tail']}",
                content=await request.read(),
                headers={"content-type": request.content_type},
            )
        if request.path.endswith("/run"):
            await asyncio.sleep(ANSWER_DELAY_S)
        return web.Response(
            status=answer.status_code, body=answer.content, content_type="application/json"
        )


@pytest.fixture
def slow_runpod(runpod):
    with SlowRunAnswers(runpod.api_base) as proxy:
        yield proxy


@pytest.mark.timeout(90)
@pytest.mark.parametrize("webhooks", [True, False], ids=["webhook", "polling-only"])
def test_a_kill_inside_the_submission_window(webhooks, serve, migrated_url, runner, slow_runpod):
    port = free_port()
    env = {
        "RUNPOD_API_BASE": slow_runpod.api_base,
        "LEASE_S": "2",
        "SUBMISSION_UNKNOWN_WAIT_S": "60",
    }
    if webhooks:
        env["PUBLIC_BASE_URL"] = f"http://127.0.0.1:{port}"
    runner.hold()
    first = serve("window-1", port=port, **env)
    job_id, _ = insert_job(migrated_url, "make it gold")
    wait_for(lambda: runner.calls("make it gold"), bool, "RunPod runs the job", 15)
    first.kill()  # /run's answer is still on its way: the id was never recorded

    serve("window-2", port=port, **env)
    runner.release()
    row = wait_for_job(migrated_url, job_id, lambda r: r["status"] == "completed", "done", 40)
    assert row["job_status"] == "completed"
    if webhooks:
        assert runner.calls("make it gold") == 1  # adopted: one GPU run
        assert row["attempts"] == 1
    else:
        assert runner.calls("make it gold") == 2  # the cost of a crash in the window
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'klein_orphan_runpod_jobs_total{action="possibly_duplicated"} 1.0' in metrics
