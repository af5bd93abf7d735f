"""What `klein submit`, `status`, `cancel`, `retry` and `jobs` do; each prints one line per
thing it did (the exit codes are __main__'s: 0 done, 1 failed, 2 bad usage, 130 Ctrl-C)."""

import argparse
import asyncio
import io
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

from handler.contract.errors import InvalidInput
from orchestrator import console, console_ops, console_output, embedded
from orchestrator.console_wait import render, wait_for
from orchestrator.db import connect, queries
from orchestrator.embedded import database_url
from orchestrator.errors import OrchestratorError
from orchestrator.runpod import RunPodClient, runpod_http
from orchestrator.settings import Settings

STOPPED_FOLLOWING = (
    "stopped following; job {job_id} goes on: `klein status {job_id}` shows it, "
    "`klein cancel {job_id}` stops it"
)
INTERRUPTED = 130


class Failed(Exception):
    """The command could not do what was asked (exit 1), in one sentence."""


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Insert a job; with --wait or --output, follow it to the end (exit 1 unless completed)."""
    output = _output_target(args.output)
    request = console.SubmitRequest(
        image=args.image,
        prompt=args.prompt,
        user_id=args.user_id or str(uuid.uuid4()),
        template_id=settings.klein_template_id,
        priority=args.priority,
        options={
            name: getattr(args, name)
            for name in ("seed", "steps", "cfg", "megapixels")
            if getattr(args, name) is not None
        },
    )
    # Checked (the image read and decoded) once, and before connecting: refused, nothing starts.
    data = console.input_data(request.image, request.prompt, request.options)
    with database_url(settings) as url, connect(url, autocommit=True) as conn:
        job_id, work_id = console.insert(conn, request, data)
        print(f"submitted job {job_id} (work {work_id})", flush=True)
        if not (args.wait or output):
            return 0
        try:
            row = _follow(conn, job_id, args)
        except KeyboardInterrupt:
            print(STOPPED_FOLLOWING.format(job_id=job_id), file=sys.stderr, flush=True)
            return INTERRUPTED
        if row is None or row["work_status"] not in console.FINISHED:
            raise Failed(f"job {job_id} did not finish within {args.timeout:g} s")
        if row["work_status"] != "completed":
            return 1
        _report_result(conn, row, settings, output)
    return 0


def _output_target(name: str | None) -> Path | None:
    """--output's file, refused (exit 2) before any row when its folder does not exist."""
    if name is None:
        return None
    target = Path(name)
    if not target.parent.is_dir():
        raise InvalidInput(f"--output {name}: the folder {target.parent} does not exist")
    if target.is_dir():
        raise InvalidInput(f"--output {name}: is a folder; give a file name")
    return target


def _follow(conn: psycopg.Connection[Any], job_id: str, args: argparse.Namespace) -> Any:
    out = io.StringIO() if args.quiet else sys.stdout
    row = wait_for(lambda: console.job_status(conn, job_id), args.timeout, out=out)
    if args.quiet and row is not None:
        print(console.describe(row), flush=True)
    return row


def _report_result(
    conn: psycopg.Connection[Any], row: dict[str, Any], settings: Settings, output: Path | None
) -> None:
    """Where the image is stored (local storage), the --output file, and the stand-in's note."""
    url = console.image_url(row)
    if url is None or (output is None and console_output.local_file(url, settings) is None):
        return
    result = console_output.fetch_result(url, settings)
    if result.local_path is not None:
        print(f"stored at {result.local_path}")
    if output is not None:
        print(f"saved {console_output.write(output, result.data)}")
    [work] = conn.execute(queries()["work_input"], {"work_id": row["work_id"]}).fetchall()
    source = console_output.input_image(work[0])
    if source is not None and console_output.looks_unedited(source, result.data):
        print(console_output.UNEDITED_NOTE, file=sys.stderr)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print one job, or the latest ones."""
    with database_url(settings) as url, connect(url) as conn:
        if args.id is None:
            rows = console.recent(conn)
            for row in rows:
                print(console.describe(row))
            if not rows:
                print("no jobs yet")
            return 0
        target = console_ops.resolve(conn, args.id)
        found = console.job_status(conn, target.job_id)
    if found is None:
        raise console_ops.NotFound(f"no job or work {args.id}")
    print(console.as_json(found) if args.json else render(found))
    return 0


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    """Cancel a work, its job, and its RunPod job."""
    with database_url(settings) as url, connect(url, autocommit=True) as conn:
        done = console_ops.cancel(conn, console_ops.resolve(conn, args.id))
    if not done.work_cancelled:
        if done.work_status == "cancelled":
            print(f"work {done.work_id} was already cancelled")
            return 0
        raise Failed(f"work {done.work_id} is {done.work_status}: there is nothing to cancel")
    problem = None
    if done.runpod_job_id and (done.job_ended or not embedded.wants_local_endpoint(settings)):
        problem = runpod_cancel(settings, done.runpod_job_id)
    print(console.shown(console_ops.cancel_line(done, problem)))
    return 0


def runpod_cancel(settings: Settings, runpod_id: str) -> str | None:
    """Cancel a RunPod job on the configured endpoint; None when done, else why not."""
    if embedded.wants_local_endpoint(settings):
        return "is not cancelled here: no RunPod endpoint is configured (RUNPOD_ENDPOINT_ID)"
    settings = embedded.with_runpod_defaults(settings)
    key = settings.runpod_api_key.get_secret_value() if settings.runpod_api_key else None

    async def cancel() -> None:
        async with runpod_http(timeout_s=15) as http:
            client = RunPodClient(
                http, settings.runpod_api_base, settings.runpod_endpoint_id or "", key
            )
            await client.cancel(runpod_id)

    try:
        asyncio.run(cancel())
    except (OrchestratorError, httpx.HTTPError) as exc:
        return f"could not be cancelled: {exc or type(exc).__name__}"
    return None


def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    """Give a failed or cancelled work a new job."""
    with database_url(settings) as url, connect(url, autocommit=True) as conn:
        target = console_ops.resolve(conn, args.id)
        job_id = console_ops.retry(conn, target.work_id)
    print(f"work {target.work_id} is pending again, as job {job_id}")
    return 0


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    """List stuck jobs, each with its reason."""
    if not args.stuck:
        raise InvalidInput("say which jobs: --stuck (`klein status` lists the latest)")
    with database_url(settings) as url, connect(url) as conn:
        found = console_ops.stuck(conn, args.older_than)
    for row, reason in found:
        print(console.shown(f"{row['job_id']}  {row['status']}  {reason}"))
    if not found:
        print(f"no stuck jobs (none unfinished for over {args.older_than:g} s, none orphaned)")
    return 0
