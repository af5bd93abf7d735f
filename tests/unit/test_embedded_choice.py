"""Which RunPod `klein serve` talks to when little or nothing is configured (no I/O)."""

import pytest

from orchestrator.embedded import wants_local_endpoint, with_runpod_defaults
from orchestrator.settings import Settings


@pytest.mark.parametrize(
    ("configured", "local", "endpoint_id"),
    [
        ({}, True, "local"),
        ({"runpod_endpoint_id": "p6tv6t2d0vjt9c"}, False, "p6tv6t2d0vjt9c"),
        ({"runpod_api_base": "http://127.0.0.1:8000/v2"}, False, "local"),
        (
            {"runpod_api_base": "http://127.0.0.1:8000/v2", "runpod_endpoint_id": "dev"},
            False,
            "dev",
        ),
    ],
    ids=["nothing", "runpod", "klein-endpoint", "klein-endpoint-named"],
)
def test_the_local_endpoint_runs_only_when_no_runpod_is_configured(
    configured, local, endpoint_id, monkeypatch
):
    for name in ("RUNPOD_ENDPOINT_ID", "RUNPOD_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(**configured)
    assert wants_local_endpoint(settings) is local
    assert with_runpod_defaults(settings).runpod_endpoint_id == endpoint_id
