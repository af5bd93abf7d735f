"""Local servers speaking the protocols of the paid remote APIs (OpenRouter, Supabase Storage)."""

from tests.fakes.openrouter import OpenRouterServer
from tests.fakes.storage import StorageServer

__all__ = ["OpenRouterServer", "StorageServer"]
