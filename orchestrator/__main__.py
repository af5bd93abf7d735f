"""`klein` (or `python -m orchestrator`): migrate, serve, submit, status, cancel, retry, jobs;
with the dev tools, endpoint and comfy-standin. The options are in console_args.py, what the
console commands do in console_commands.py."""

import sys

try:  # Ctrl-C while the modules load (a second or so): exit 130 quietly, as after they have
    import argparse
    import asyncio
    import logging
    import os
    import signal
    from collections.abc import Callable
    from contextlib import ExitStack
    from types import FrameType

    import psycopg
    import uvloop
    from pydantic import ValidationError

    from handler.contract.errors import InvalidInput
    from orchestrator import embedded, logs, plugins
    from orchestrator.console import shown
    from orchestrator.console_args import parser
    from orchestrator.console_commands import (
        INTERRUPTED,
        Failed,
        cmd_cancel,
        cmd_jobs,
        cmd_retry,
        cmd_status,
        cmd_submit,
    )
    from orchestrator.console_ops import NotFound
    from orchestrator.console_output import ResultError
    from orchestrator.db import DatabaseUnreachable
    from orchestrator.embedded import database_url, migrate
    from orchestrator.errors import ConfigError
    from orchestrator.migrate import MigrationError
    from orchestrator.settings import Settings
except KeyboardInterrupt:
    sys.exit(130)

__all__ = ["main", "migrate", "parser"]
SERVICES = ("serve", "endpoint", "comfy-standin")  # long-running: their log is their output
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # `kill`, a closed terminal
BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a command whose reader left


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwinds as Ctrl-C does, so what this process started (the embedded
    PostgreSQL above all) is stopped on the way out; the exit code is 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def stop_on_signals() -> None:
    """Make SIGTERM and SIGHUP raise Terminated (once) instead of ending the process at once."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _terminate)


def shutting_down() -> None:
    """From here on the process is leaving anyway: SIGTERM and SIGHUP must not cut that short."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, _ignore)  # a Python handler, reset in child processes, not SIG_IGN


def _terminate(signum: int, frame: FrameType | None) -> None:
    shutting_down()
    raise Terminated(signum)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Nothing: the process is already stopping."""


def log_level(command: str, verbose: int, quiet: bool) -> int:
    """Services log what they do; one-shot commands only warnings, unless -v; -q is quieter."""
    if verbose >= 2:
        return logging.DEBUG
    if verbose == 1:
        return logging.INFO
    if command in SERVICES:
        return logging.WARNING if quiet else logging.INFO
    return logging.ERROR if quiet else logging.WARNING


def main(argv: list[str] | None = None) -> int:
    """Run a command; exit codes: 0 done, 1 failed, 2 bad usage or configuration, 130 Ctrl-C,
    143 SIGTERM, 129 SIGHUP."""
    stop_on_signals()
    try:
        args = parser(plugins.commands()).parse_args(argv)
    except Terminated as exc:
        return 128 + exc.signum
    except KeyboardInterrupt:
        return INTERRUPTED
    logs.configure(log_level(args.command, args.verbose, args.quiet))
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """The command, with every failure as one line on stderr and its exit code."""
    try:
        settings = Settings()
        run = COMMANDS.get(args.command) or args.run  # the dev tools set `run`
        code = run(args, settings)
        sys.stdout.flush()  # a reader that left (`klein status | head -1`) is seen here
        return code
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]).upper() or "the environment"
        message = error["msg"].removeprefix("Value error, ")
        return _fail(args, f"bad configuration: {name}: {message}", 2)
    except (ConfigError, InvalidInput) as exc:
        return _fail(args, str(exc), 2)
    except (Failed, NotFound, ResultError, MigrationError, DatabaseUnreachable) as exc:
        return _fail(args, str(exc) or type(exc).__name__, 1)
    except BrokenPipeError:  # the reader has gone: nobody to tell, and nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return BROKEN_PIPE
    except (psycopg.Error, OSError) as exc:  # not translated where they arose: still one line
        return _fail(args, str(exc) or type(exc).__name__, 1)
    except Terminated as exc:
        return _fail(args, f"stopped by {exc}", 128 + exc.signum)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", INTERRUPTED)
    except Exception as exc:  # unplanned: still one line; the traceback is logged (shown by -v)
        logging.getLogger("orchestrator").info("klein %s failed", args.command, exc_info=True)
        return _fail(args, f"internal error ({type(exc).__name__}); -v shows where", 1)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    """One line on stderr, never a traceback."""
    print(f"klein {args.command}: {shown(' '.join(message.split()))}", file=sys.stderr)
    return code


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    """Apply the migrations."""
    if not settings.database_url:
        with database_url(settings):
            print(f"the embedded database in {settings.local_database_dir} is migrated")
        return 0
    with database_url(settings) as url:
        applied = asyncio.run(migrate(url))
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}")
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """Serve until SIGTERM, with the embedded defaults for what is not configured."""
    from orchestrator.serve import Address, bind, run_server  # noqa: PLC0415 - heavy; serve only

    port = settings.klein_port if args.port is None else args.port
    with ExitStack() as stack:
        sock = bind(Address(args.host or settings.klein_host, port))  # a busy port: refused now
        stack.callback(sock.close)
        address = Address(args.host or settings.klein_host, sock.getsockname()[1])  # port 0
        url = stack.enter_context(database_url(settings))
        settings = settings.model_copy(update={"database_url": url})
        if embedded.wants_local_endpoint(settings):
            settings = stack.enter_context(embedded.local_endpoint(settings))
        try:
            uvloop.run(run_server(embedded.with_runpod_defaults(settings), address, sock))
        finally:
            shutting_down()  # the loop handled the signal that ended it; now stop the rest
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "migrate": cmd_migrate,
    "serve": cmd_serve,
    "submit": cmd_submit,
    "status": cmd_status,
    "cancel": cmd_cancel,
    "retry": cmd_retry,
    "jobs": cmd_jobs,
}

if __name__ == "__main__":
    sys.exit(main())
