"""`klein migrate` as a user runs it."""

import os
import subprocess
import sys


def klein(*args: str, database_url: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url:
        env["DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_migrate_applies_then_has_nothing_to_do(pg_url):
    first = klein("migrate", database_url=pg_url)
    assert first.returncode == 0, first.stderr
    assert "applied 3 migration(s)" in first.stdout
    second = klein("migrate", database_url=pg_url)
    assert second.returncode == 0
    assert "applied 0 migration(s): none needed" in second.stdout


def test_migrate_without_a_database_says_what_to_set():
    done = klein("migrate", database_url=None)
    assert done.returncode == 2
    assert "set DATABASE_URL" in done.stderr


def test_migrate_against_an_unreachable_database_is_one_clear_line():
    done = klein("migrate", database_url="postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")
    assert done.returncode == 1
    assert done.stderr.startswith("klein migrate: ")
    assert "Traceback" not in done.stderr
