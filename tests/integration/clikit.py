"""Running `klein` as a user does: a subprocess, configured through its environment."""

import os
import subprocess
import sys
from pathlib import Path


def klein(
    *args: str,
    database_url: str | None,
    cwd: Path | None = None,
    timeout_s: float = 50,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`python -m orchestrator ARGS` in `env` (default: this one) with DATABASE_URL set (or
    unset when None)."""
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "DATABASE_URL"}
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
