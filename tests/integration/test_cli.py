"""`klein migrate` as a user runs it."""

from orchestrator.migrate import migrations_dir
from tests.integration.clikit import klein


def test_migrate_applies_then_has_nothing_to_do(pg_url):
    first = klein("migrate", database_url=pg_url)
    assert first.returncode == 0, first.stderr
    every = sorted(path.name.split("_", 1)[0] for path in migrations_dir().glob("*.sql"))
    assert f"applied {len(every)} migration(s): {', '.join(every)}" in first.stdout
    second = klein("migrate", database_url=pg_url)
    assert second.returncode == 0
    assert "applied 0 migration(s): none needed" in second.stdout


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
