"""Shared pytest fixtures (keep each one small and documented; add new ones below)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.fakes.fixtures import openrouter_server, storage_server  # noqa: F401

if TYPE_CHECKING:
    from devtools.comfy_standin import ComfyTestServer


TEST_HOME = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Every test (and every command a test starts) gets a data folder of its own session, never
    the user's (~/.local/share/klein, or their KLEIN_HOME), which holds their embedded database
    and stored images: a test that builds the app from default settings made its storage/ there."""
    home = tempfile.mkdtemp(prefix="klein-test-home-")
    config.stash[TEST_HOME] = home
    os.environ["KLEIN_HOME"] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    if (home := config.stash.get(TEST_HOME, None)) is not None:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def comfy_server(tmp_path: Path) -> Iterator[ComfyTestServer]:
    """A started ComfyUI protocol server rooted at tmp_path/"comfyui" (input/, output/)."""
    from devtools.comfy_standin import ComfyTestServer

    with ComfyTestServer(tmp_path / "comfyui") as server:
        yield server
