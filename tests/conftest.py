"""Shared pytest fixtures (keep each one small and documented; add new ones below)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.fakes.fixtures import openrouter_server, storage_server  # noqa: F401

if TYPE_CHECKING:
    from devtools.comfy_standin import ComfyTestServer


@pytest.fixture
def comfy_server(tmp_path: Path) -> Iterator[ComfyTestServer]:
    """A started ComfyUI protocol server rooted at tmp_path/"comfyui" (input/, output/)."""
    from devtools.comfy_standin import ComfyTestServer

    with ComfyTestServer(tmp_path / "comfyui") as server:
        yield server
