"""A database URL gets a connect timeout unless it has one, and a failed connection is described
by its host alone (no I/O)."""

import psycopg
import pytest

from orchestrator.db import unreachable, where, with_connect_timeout


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@db:5432/klein", "postgresql://u:pw@db:5432/klein?connect_timeout=7"),
        (
            "postgresql://u@db/klein?sslmode=require",
            "postgresql://u@db/klein?sslmode=require&connect_timeout=7",
        ),
        ("postgres://db/klein?connect_timeout=3", "postgres://db/klein?connect_timeout=3"),
        ("host=db dbname=klein", "host=db dbname=klein connect_timeout=7"),
        ("host=db connect_timeout=3", "host=db connect_timeout=3"),
    ],
    ids=["url", "url-with-query", "url-own-timeout", "key-value", "key-value-own-timeout"],
)
def test_a_connect_timeout_is_added_unless_the_url_has_one(url: str, expected: str) -> None:
    assert with_connect_timeout(url, 7) == expected


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://klein:s3cret@db.example:6543/klein", "db.example:6543"),
        ("postgresql://klein:s3cret@db.example/klein", "db.example"),
        ("postgresql://postgres:@/klein?host=/tmp/pgdata", "/tmp/pgdata"),
        ("postgresql:///klein", "the local socket"),
    ],
)
def test_a_database_is_named_by_its_host_never_its_password(url: str, shown: str) -> None:
    assert where(url) == shown
    assert "s3cret" not in str(unreachable(url, psycopg.OperationalError("refused")))


def test_a_failed_connection_keeps_libpqs_reason_not_its_repeated_host() -> None:
    url = "postgresql://klein@127.0.0.1:9/klein"
    error = psycopg.OperationalError(
        'connection failed: connection to server at "127.0.0.1", port 9 failed: '
        "Connection refused\n\tIs the server running on that host and accepting TCP/IP "
        "connections?"
    )
    assert str(unreachable(url, error)) == (
        "cannot connect to the database at 127.0.0.1:9: Connection refused"
    )
