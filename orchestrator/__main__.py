"""`klein` (or `python -m orchestrator`): the orchestrator's command line.

Implemented so far: `migrate`. `serve`, `submit`, `status` and `endpoint` come with issues 3/4.
"""

import argparse
import asyncio
import logging
import sys

import psycopg

from orchestrator.migrate import MigrationError, apply_migrations, migrations_dir
from orchestrator.settings import Settings

log = logging.getLogger("klein")


async def migrate(database_url: str) -> list[str]:
    """Apply every migration not yet recorded; returns the versions applied."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        return await apply_migrations(conn, migrations_dir())


def main(argv: list[str] | None = None) -> int:
    """Parse the command and run it; exit codes: 0 done, 1 failed, 2 bad usage."""
    parser = argparse.ArgumentParser(prog="klein", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply supabase/migrations to DATABASE_URL")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if args.command == "migrate":
        if not settings.database_url:
            print("klein migrate: set DATABASE_URL", file=sys.stderr)
            return 2
        try:
            applied = asyncio.run(migrate(settings.database_url))
        except (MigrationError, psycopg.Error) as exc:
            print(f"klein migrate: {exc}", file=sys.stderr)
            return 1
        print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none needed'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
