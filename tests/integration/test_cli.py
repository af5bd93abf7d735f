"""`klein migrate` as a user runs it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from orchestrator.migrate import migrations_dir
from tests.integration.clikit import klein

REPO_ROOT = Path(__file__).resolve().parents[2]


def klein_in_empty_package(database_url: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """`klein migrate` from a copy of the code whose package lacks its migrations (as a wheel
    built without its data did)."""
    site = tmp_path / "site"
    for package in ("orchestrator", "handler"):
        ignore = shutil.ignore_patterns("migrations", "__pycache__")
        shutil.copytree(REPO_ROOT / package, site / package, ignore=ignore)
    env = os.environ | {"PYTHONPATH": str(site), "DATABASE_URL": database_url}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, orchestrator.__main__ as m; sys.exit(m.main())",
            "migrate",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )


def test_migrate_applies_then_has_nothing_to_do(pg_url):
    first = klein("migrate", database_url=pg_url)
    assert first.returncode == 0, first.stderr
    every = sorted(path.name.split("_", 1)[0] for path in migrations_dir().glob("*.sql"))
    assert f"applied {len(every)} migration(s): {', '.join(every)}" in first.stdout
    second = klein("migrate", database_url=pg_url)
    assert second.returncode == 0
    assert "applied 0 migration(s): none needed" in second.stdout


def test_migrate_without_migration_files_is_an_error_not_none_needed(pg_url, tmp_path):
    done = klein_in_empty_package(pg_url, tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("klein migrate: no migration files in ")
    assert "none needed" not in done.stdout
    assert "Traceback" not in done.stderr


def test_migrate_against_an_unreachable_database_is_one_clear_line():
    done = klein("migrate", database_url="postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")
    assert done.returncode == 1
    assert done.stderr.startswith("klein migrate: ")
    assert "Traceback" not in done.stderr


def test_submit_refuses_a_priority_the_database_would_refuse(pg_url):
    result = klein("submit", "samples/portrait.png", "x", "--priority", "5000", database_url=pg_url)
    assert result.returncode == 2
    assert "--priority: must be between -1000 and 1000" in result.stderr
    assert "Traceback" not in result.stderr
