"""Logging with the job bound once: every record logged while a job runs carries its ids."""

import logging
from contextvars import ContextVar
from typing import Any

_job_id: ContextVar[str | None] = ContextVar("job_id", default=None)
_work_id: ContextVar[str | None] = ContextVar("work_id", default=None)

FORMAT = "%(asctime)s %(levelname)s %(name)s%(job_context)s: %(message)s"


def bind_job(job_id: str, work_id: str) -> None:
    """Bind a job's ids to the current task (asyncio gives each task its own context copy)."""
    _job_id.set(job_id)
    _work_id.set(work_id)


def install_record_factory() -> None:
    """Make every log record carry `job_id`, `work_id` and a printable `job_context`."""
    base = logging.getLogRecordFactory()
    if getattr(base, "klein_job_context", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        job_id, work_id = _job_id.get(), _work_id.get()
        record.job_id, record.work_id = job_id, work_id
        record.job_context = f" [job={job_id} work={work_id}]" if job_id else ""
        return record

    factory.klein_job_context = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure(level: int = logging.INFO) -> None:
    """Root logging for the CLI: one line per record, with the job's ids when there is one."""
    install_record_factory()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpx2", "httpcore", "uvicorn.access", "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
