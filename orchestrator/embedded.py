"""Embedded defaults for a machine with nothing configured: PostgreSQL from a wheel.

pgserver ships PostgreSQL's binaries inside its wheel, so `klein serve` needs no server, Docker or
system package; the data lives in a local folder and the server stops when `klein` exits.
"""

import warnings
from pathlib import Path


def embedded_database_url(data_dir: Path) -> str:
    """Start (or reuse) a PostgreSQL whose data is in `data_dir`; returns its URL."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver  # noqa: PLC0415 - only needed when no DATABASE_URL is set

        server = pgserver.get_server(data_dir.resolve(), cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri())
