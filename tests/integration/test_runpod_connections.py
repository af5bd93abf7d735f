"""Many jobs polling RunPod at once: the client keeps at most CONNECTIONS requests under way, the
rest wait their turn outside the HTTP client's own queue (whose bookkeeping was a third of
klein serve's CPU with 1,000 jobs: bench/full_path.py measures that part), and all are
answered."""

import asyncio

from aiohttp import web

from orchestrator.runpod import CONNECTIONS, RunPodClient, runpod_http

DELAY_S = 0.1
WAVES = 3


class SlowStatus:
    """`/status` answering after DELAY_S, counting the requests under way at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    async def status(self, request: web.Request) -> web.Response:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(DELAY_S)
        finally:
            self.now -= 1
        return web.json_response({"id": request.match_info["job_id"], "status": "IN_PROGRESS"})


def test_a_burst_of_polls_keeps_to_the_clients_connections_and_is_answered_in_full():
    server = SlowStatus()

    async def scenario() -> list[str]:
        app = web.Application()
        app.router.add_get("/v2/ep/status/{job_id}", server.status)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            async with runpod_http(timeout_s=10) as http:
                runpod = RunPodClient(
                    http, f"http://127.0.0.1:{port}/v2", "ep", "key", status_per_10s=100_000
                )
                answers = await asyncio.gather(
                    *(runpod.peek(f"job-{n}") for n in range(WAVES * CONNECTIONS))
                )
        finally:
            await runner.cleanup()
        return [answer.status for answer in answers]

    statuses = asyncio.run(scenario())
    assert statuses == ["IN_PROGRESS"] * (WAVES * CONNECTIONS)
    assert server.most == CONNECTIONS  # never more under way at once
