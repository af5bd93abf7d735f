"""Pytest fixtures for the fakes; import them in a conftest.py to use them.

from tests.fakes.fixtures import openrouter_server, storage_server  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.openrouter import OpenRouterServer
from tests.fakes.storage import StorageServer


@pytest.fixture
def openrouter_server() -> Iterator[OpenRouterServer]:
    """A fresh OpenRouter fake per test (key `DEFAULT_API_KEY`, base URL `server.base_url`)."""
    with OpenRouterServer() as server:
        yield server


@pytest.fixture
def storage_server() -> Iterator[StorageServer]:
    """A fresh Supabase Storage fake per test (bucket `works`, key `DEFAULT_SERVICE_KEY`)."""
    with StorageServer() as server:
        yield server
