"""`klein`'s command line: every command, option, range and default, for --help."""

import argparse
import math
import os
from typing import TypeAlias

from handler import contract
from orchestrator import plugins
from orchestrator.console_ops import DEFAULT_STUCK_AFTER_S
from orchestrator.settings import MAX_SECONDS, default_klein_home

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000  # the generation_jobs CHECK constraint
WAIT_TIMEOUT_S = 900.0
DESCRIPTION = """\
The Klein I2I orchestrator: serve runs the job flow; submit, status, cancel, retry and jobs do
what the web app and an operator do. Configuration comes from the environment (see README).
With nothing configured, klein runs PostgreSQL itself (data in the folder below), and serve runs
jobs on a local RunPod endpoint with this project's handler against COMFY_API_URL."""


def priority(text: str) -> int:
    """A --priority value within what the database accepts."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise argparse.ArgumentTypeError(f"must be between {PRIORITY_MIN} and {PRIORITY_MAX}")
    return value


def port(text: str) -> int:
    """A --port value: 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("must be between 0 and 65535")
    return value


def seconds(text: str, *, zero: bool = False) -> float:
    """A duration in seconds: a finite number above 0 (from 0 with `zero`), at most MAX_SECONDS."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    least = "at least 0" if zero else "above 0"
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero) or value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be {least} and at most {MAX_SECONDS:,} seconds")
    return value


def age(text: str) -> float:
    """An --older-than value: seconds, 0 included."""
    return seconds(text, zero=True)


def home_note() -> str:
    """Where local state lives, for --help (read before Settings, which may refuse the env)."""
    home = os.environ.get("KLEIN_HOME") or str(default_klein_home())
    return (
        "Exit codes: 0 done, 1 failed, 2 bad usage or configuration, 130 interrupted (Ctrl-C). "
        f"Local state (the embedded database, local storage) lives in {home}, whatever the "
        "current directory; KLEIN_HOME moves it. Stop klein and delete that folder to start afresh."
    )


def _verbosity() -> argparse.ArgumentParser:
    """-v / -q, accepted before or after the command (SUPPRESS keeps the root's value)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="show informational logs (-vv: debug)",
    )
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="only warnings of the service, errors of the others; --wait prints only the end",
    )
    return common


Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def parser(devtools: plugins.Register | None) -> argparse.ArgumentParser:
    """The command line; `devtools` adds the dev tools' commands (None: not installed)."""
    common = _verbosity()
    root = argparse.ArgumentParser(
        prog="klein",
        description=DESCRIPTION,
        epilog=home_note(),
        parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    root.set_defaults(verbose=0, quiet=False)
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_migrate(commands, common)
    _add_serve(commands, common)
    _add_submit(commands, common)
    _add_status(commands, common)
    _add_operator(commands, common)
    if devtools is None:
        plugins.add_missing_commands(commands)
    else:
        devtools(commands)
    return root


def _add_migrate(commands: Commands, common: argparse.ArgumentParser) -> None:
    text = (
        "apply supabase/migrations to DATABASE_URL (or the embedded database), recording each "
        "where the Supabase CLI does; running it again changes nothing"
    )
    commands.add_parser("migrate", parents=[common], help=text, description=text)


def _add_serve(commands: Commands, common: argparse.ArgumentParser) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[common],
        help="the HTTP app (webhooks, health, metrics, stored images) and the job worker",
        description=(
            "The HTTP app and the job worker, until SIGTERM or Ctrl-C. Without DATABASE_URL it "
            "runs an embedded PostgreSQL (in the data folder below); without RUNPOD_ENDPOINT_ID "
            "(and RUNPOD_API_BASE) a local RunPod endpoint, one of the dev tools "
            "(klein-i2i[devtools]), that runs this project's handler against COMFY_API_URL; "
            "without SUPABASE_URL it stores images in the data folder."
        ),
    )
    serve.add_argument("--host", help="listen address (default: KLEIN_HOST, else 127.0.0.1)")
    serve.add_argument(
        "--port",
        type=port,
        help="listen port, 1..65535, or 0 for any free one (default: KLEIN_PORT, else 8080)",
    )


def _add_submit(commands: Commands, common: argparse.ArgumentParser) -> None:
    submit = commands.add_parser(
        "submit",
        parents=[common],
        help="create a work and its job, as the web app does",
        description=(
            "Create a work and its job, as the web app does. Every parameter is checked with the "
            "worker's own rules before any row is written (exit 2 when one is wrong)."
        ),
    )
    submit.add_argument(
        "image",
        help="a local image file (at most 7.4 MB: it travels inside RunPod's /run body), or an "
        "http(s) URL (at most 20 MB, fetched by the worker)",
    )
    submit.add_argument(
        "prompt",
        help="the edit instruction, at most 2000 characters; Korean is translated to English "
        "when OPENROUTER_API_KEY is set, else sent as it is",
    )
    submit.add_argument(
        "--seed",
        type=int,
        help="the noise seed, up to 2^64-1; 0, negative or absent (default): a random seed, "
        "recorded with the result",
    )
    submit.add_argument(
        "--steps",
        type=int,
        help=f"sampling steps, {contract.STEPS_MIN}..{contract.STEPS_MAX} "
        f"(default {contract.DEFAULT_STEPS})",
    )
    submit.add_argument(
        "--cfg",
        type=float,
        help=f"guidance scale, {contract.CFG_MIN}..{contract.CFG_MAX} "
        f"(default {contract.DEFAULT_CFG:g})",
    )
    submit.add_argument(
        "--megapixels",
        type=float,
        help=f"output size in megapixels, {contract.MEGAPIXELS_MIN}..{contract.MEGAPIXELS_MAX}, "
        f"same aspect ratio as the image (default {contract.DEFAULT_MEGAPIXELS:g})",
    )
    submit.add_argument(
        "--priority",
        type=priority,
        default=0,
        help=f"higher is claimed first, {PRIORITY_MIN}..{PRIORITY_MAX} (default 0)",
    )
    submit.add_argument("--user-id", default=None, help="the owner, a UUID (default: a new one)")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the job with a live progress line until it ends (Ctrl-C stops following)",
    )
    submit.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the result image to FILE (implies --wait)",
    )
    submit.add_argument(
        "--timeout",
        type=seconds,
        default=WAIT_TIMEOUT_S,
        help=f"seconds --wait follows the job (default {WAIT_TIMEOUT_S:g})",
    )


def _add_status(commands: Commands, common: argparse.ArgumentParser) -> None:
    status = commands.add_parser(
        "status",
        parents=[common],
        help="one job, or the latest 20 jobs",
        description=(
            "One job's state (by its job id or work id, or an unambiguous start of either), or "
            "the latest 20 jobs, newest first."
        ),
    )
    status.add_argument("id", nargs="?", help="a job or work id, or its first characters")
    status.add_argument("--json", action="store_true", help="print the whole row as JSON")


def _add_operator(commands: Commands, common: argparse.ArgumentParser) -> None:
    cancel = commands.add_parser(
        "cancel",
        parents=[common],
        help="cancel a work and its job (its RunPod job too)",
        description=(
            "Cancel a work that has not ended. A job a running klein serve holds is stopped by "
            "that process, RunPod job included; otherwise the job ends here and its RunPod job "
            "is cancelled when a RunPod endpoint is configured."
        ),
    )
    cancel.add_argument("id", help="a job or work id, or its first characters")
    retry = commands.add_parser(
        "retry",
        parents=[common],
        help="give a failed or cancelled work a new job",
        description="Give a failed or cancelled work a new pending job; the work is pending again.",
    )
    retry.add_argument("id", help="a work id (or a job id of it), or its first characters")
    jobs = commands.add_parser(
        "jobs",
        parents=[common],
        help="list unfinished jobs that need a look (--stuck), with why",
        description=(
            "With --stuck: unfinished jobs that are old, leased by a dead process, taken without "
            "a lease (rows the n8n workflow left), or waiting for an operator, each with why."
        ),
    )
    jobs.add_argument("--stuck", action="store_true", help="list stuck jobs (required for now)")
    jobs.add_argument(
        "--older-than",
        type=age,
        default=DEFAULT_STUCK_AFTER_S,
        metavar="SECONDS",
        help=f"an unfinished job older than this is stuck (default {DEFAULT_STUCK_AFTER_S:g})",
    )
