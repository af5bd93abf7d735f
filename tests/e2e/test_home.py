"""Local state lives in one per-user data folder (KLEIN_HOME), whatever the current directory:
`klein` run from two folders joins one embedded database and writes nothing where it runs."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.settings import Settings, default_klein_home
from tests.e2e.servekit import REPO_ROOT, base_env
from tests.integration import clikit

SAMPLE = REPO_ROOT / "samples" / "portrait.png"
KLEIN_TIMEOUT_S = 60


@pytest.fixture
def klein_home() -> Iterator[Path]:
    """A KLEIN_HOME outside pytest's tmp tree: as root, pgserver runs PostgreSQL as its own user,
    which must reach the folder, and any pytest session resets that tree to mode 0700."""
    folder = Path(tempfile.mkdtemp(prefix="klein-home-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def klein_in(cwd: Path, env: dict[str, str], *args: str):
    """`klein ARGS` typed in `cwd`, with no DATABASE_URL."""
    return clikit.klein(*args, database_url=None, cwd=cwd, timeout_s=KLEIN_TIMEOUT_S, env=env)


def test_two_working_directories_share_one_database_and_stay_empty(
    klein_home: Path, tmp_path: Path
) -> None:
    home = klein_home / "home"
    env = base_env() | {"KLEIN_HOME": str(home)}
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()

    submitted = klein_in(first, env, "submit", str(SAMPLE), "배경을 해변으로 바꿔줘")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[2]
    listing = klein_in(second, env, "status")
    assert listing.returncode == 0, listing.stderr

    assert [line.split()[0] for line in listing.stdout.splitlines()] == [job_id]
    assert list(first.iterdir()) == []
    assert list(second.iterdir()) == []
    assert (home / "pgdata" / "PG_VERSION").is_file()


def test_help_says_where_local_state_lives(tmp_path: Path) -> None:
    env = base_env() | {"KLEIN_HOME": str(tmp_path / "state")}
    shown = klein_in(tmp_path, env, "--help")
    assert shown.returncode == 0
    assert str(tmp_path / "state") in "".join(shown.stdout.split())  # wrapped at any hyphen


def test_the_data_folder_is_per_user_and_its_parts_can_move(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("KLEIN_HOME", "LOCAL_DATABASE_DIR", "LOCAL_STORAGE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    default = Settings()
    assert default.klein_home == default_klein_home()
    assert default.klein_home.is_absolute()
    assert default.local_database_dir == default.klein_home / "pgdata"
    assert default.local_storage_dir == default.klein_home / "storage"

    monkeypatch.setenv("KLEIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LOCAL_STORAGE_DIR", str(tmp_path / "images"))
    moved = Settings()
    assert moved.local_database_dir == tmp_path / "home" / "pgdata"
    assert moved.local_storage_dir == tmp_path / "images"
