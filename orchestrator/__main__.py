"""`klein` (or `python -m orchestrator`): migrate, serve, submit, status; with the dev tools,
endpoint and comfy-standin.

Configuration comes from the environment (see README); flags override a few of it. With nothing
configured, `klein` runs PostgreSQL itself (data in the per-user folder below) and `klein serve`
runs jobs on a local RunPod endpoint with this project's handler against COMFY_API_URL.
"""

import argparse
import asyncio
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import psycopg
from pydantic import ValidationError

from handler.contract.errors import InvalidInput
from orchestrator import console, embedded, logs, plugins
from orchestrator.embedded import embedded_postgres
from orchestrator.errors import ConfigError
from orchestrator.migrate import MigrationError, apply_migrations, migrations_dir
from orchestrator.settings import Settings, default_klein_home

log = logging.getLogger("klein")


async def migrate(database_url: str) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await apply_migrations(conn, migrations_dir())


PRIORITY_MIN, PRIORITY_MAX = -1000, 1000  # the generation_jobs CHECK constraint


def priority(text: str) -> int:
    """A --priority value within what the database accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise argparse.ArgumentTypeError(f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    return value


def home_note() -> str:
    """Where local state lives, for --help (read before Settings, which may refuse the env)."""
    home = os.environ.get("KLEIN_HOME") or str(default_klein_home())
    return (
        f"Local state (the embedded database, local storage) lives in {home}, whatever the "
        "current directory; KLEIN_HOME moves it. Stop klein and delete that folder to start afresh."
    )


def parser(devtools: plugins.Register | None) -> argparse.ArgumentParser:
    """The command line; `devtools` adds the dev tools' commands (None: not installed)."""
    root = argparse.ArgumentParser(prog="klein", description=__doc__, epilog=home_note())
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "migrate", help="apply supabase/migrations to DATABASE_URL (or the embedded database)"
    )
    serve = commands.add_parser(
        "serve",
        help="HTTP (webhooks, health, metrics) and the job worker",
        description=(
            "The HTTP app and the job worker, until SIGTERM. Without DATABASE_URL it runs an "
            "embedded PostgreSQL (in the data folder below); without RUNPOD_ENDPOINT_ID (and "
            "RUNPOD_API_BASE) a local RunPod endpoint, one of the dev tools "
            "(klein-i2i[devtools]), that runs this project's handler against COMFY_API_URL; "
            "without SUPABASE_URL it stores images in the data folder."
        ),
    )
    serve.add_argument("--host", help="listen address (KLEIN_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="listen port (KLEIN_PORT, default 8080)")
    submit = commands.add_parser("submit", help="create a work and its job, as the web app does")
    submit.add_argument("image", help="a local image file, or an http(s) URL")
    submit.add_argument("prompt", help="the edit instruction (Korean is translated)")
    submit.add_argument("--seed", type=int)
    submit.add_argument("--steps", type=int)
    submit.add_argument("--cfg", type=float)
    submit.add_argument("--megapixels", type=float)
    submit.add_argument(
        "--priority",
        type=priority,
        default=0,
        help=f"higher is claimed first, {PRIORITY_MIN}..{PRIORITY_MAX} (default 0)",
    )
    submit.add_argument("--user-id", default=None, help="the owner (default: a new UUID)")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("--timeout", type=float, default=900.0, help="seconds --wait follows it")
    status = commands.add_parser("status", help="one job (by job or work id), or the latest jobs")
    status.add_argument("id", nargs="?")
    status.add_argument("--json", action="store_true", help="print the whole row")
    _add_devtools(commands, devtools)
    return root


def _add_devtools(
    commands: "argparse._SubParsersAction[argparse.ArgumentParser]",
    register: plugins.Register | None,
) -> None:
    """`endpoint` and `comfy-standin`, from the dev tools when installed (an entry point)."""
    if register is None:
        plugins.add_missing_commands(commands)
    else:
        register(commands)


def main(argv: list[str] | None = None) -> int:
    """Run a command; exit codes: 0 done, 1 failed, 2 bad usage or configuration."""
    args = parser(plugins.commands()).parse_args(argv)
    logs.configure()
    try:
        settings = Settings()
        run = COMMANDS.get(args.command) or args.run  # the dev tools set `run`
        return run(args, settings)
    except ValidationError as exc:
        error = exc.errors()[0]
        return _fail(args, f"bad configuration: {error['loc']}: {error['msg']}", 2)
    except (ConfigError, InvalidInput) as exc:
        return _fail(args, str(exc), 2)
    except (MigrationError, psycopg.Error, OSError) as exc:
        return _fail(args, str(exc) or type(exc).__name__, 1)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """One line on stderr, never a traceback."""
    print(f"klein {args.command}: {' '.join(message.split())}", file=sys.stderr)
    return code


@contextmanager
def database_url(settings: Settings) -> Iterator[str]:
    """DATABASE_URL; without it, the embedded PostgreSQL (started or joined, and migrated)."""
    if settings.database_url:
        yield settings.database_url
        return
    log.info("no DATABASE_URL: using the embedded PostgreSQL in %s", settings.local_database_dir)
    with embedded_postgres(settings.local_database_dir) as url:
        asyncio.run(migrate(url))
        yield url


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Apply the migrations."""
    if not settings.database_url:
        with database_url(settings):
            print(f"the embedded database in {settings.local_database_dir} is migrated")
        return 0
    applied = asyncio.run(migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGTERM, with the embedded defaults for what is not configured."""
    from orchestrator.serve import Address, run_server  # noqa: PLC0415 - heavy; serve only

    address = Address(args.host or settings.klein_host, args.port or settings.klein_port)
    with ExitStack() as stack:
        url = stack.enter_context(database_url(settings))
        settings = settings.model_copy(update={"database_url": url})
        if embedded.wants_local_endpoint(settings):
            settings = stack.enter_context(embedded.local_endpoint(settings))
        asyncio.run(run_server(embedded.with_runpod_defaults(settings), address))
    return 0


def cmd_submit(args: argparse.Namespace, settings: Settings) -> int:
    """Insert a job; with --wait, follow it to the end (exit 1 unless it completed)."""
    options = {
        name: getattr(args, name)
        for name in ("seed", "steps", "cfg", "megapixels")
        if getattr(args, name) is not None
    }
    request = console.SubmitRequest(
        image=args.image,
        prompt=args.prompt,
        user_id=args.user_id or str(uuid.uuid4()),
        template_id=settings.klein_template_id,
        priority=args.priority,
        options=options,
    )
    with database_url(settings) as url, psycopg.connect(url, autocommit=True) as conn:
        job_id, work_id = console.submit(conn, request)
        print(f"submitted job {job_id} (work {work_id})", flush=True)
        if not args.wait:
            return 0
        row = console.wait_for(lambda: console.job_status(conn, job_id), args.timeout)
    if row is None or row["work_status"] not in console.FINISHED:
        return _fail(args, f"job {job_id} did not finish within {args.timeout:g} s", 1)
    return 0 if row["work_status"] == "completed" else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Print one job, or the latest ones."""
    with database_url(settings) as url, psycopg.connect(url) as conn:
        if args.id is None:
            for row in console.recent(conn):
                print(console.describe(row))
            return 0
        try:
            uuid.UUID(args.id)
        except ValueError:
            return _fail(args, f"not a job or work id: {args.id}", 2)
        found = console.job_status(conn, args.id)
    if found is None:
        return _fail(args, f"no job or work {args.id}", 1)
    print(console.as_json(found) if args.json else console.describe(found))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "migrate": cmd_migrate,
    "serve": cmd_serve,
    "submit": cmd_submit,
    "status": cmd_status,
}

if __name__ == "__main__":
    sys.exit(main())
