"""Log records carry the job bound to the running task, and only that job."""

import asyncio
import logging

from orchestrator.logs import bind_job, install_record_factory


def test_each_task_logs_with_its_own_job(caplog):
    install_record_factory()
    log = logging.getLogger("orchestrator.test")

    async def job(job_id: str) -> None:
        bind_job(job_id, f"work-{job_id}")
        await asyncio.sleep(0)
        log.info("working")

    async def main() -> None:
        await asyncio.gather(job("a"), job("b"))
        log.info("outside")

    with caplog.at_level(logging.INFO, logger="orchestrator.test"):
        asyncio.run(main())
    seen = {(r.getMessage(), r.job_id, r.work_id) for r in caplog.records}
    assert seen == {("working", "a", "work-a"), ("working", "b", "work-b"), ("outside", None, None)}
    assert [r.job_context for r in caplog.records if r.job_id == "a"] == [" [job=a work=work-a]"]
