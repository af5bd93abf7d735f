"""The local endpoint's settings: one frozen object, built by whoever starts the endpoint."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field


@dataclass(frozen=True)
class EndpointConfig:
    """How the local endpoint behaves; each default is RunPod's where RunPod documents one."""

    endpoint_id: str = "local"
    # When set, every route needs `Authorization: Bearer <key>` (or the bare key, as RunPod takes).
    api_key: str | None = None
    workers: int = 1
    execution_timeout_ms: int = 600_000
    ttl_ms: int = 86_400_000
    result_retention_s: float = 1800
    sync_result_retention_s: float = 60
    sync_wait_s: float = 90
    # RunPod refuses bigger bodies (a large image_base64 is the usual cause).
    max_run_bytes: int = 10_000_000
    max_runsync_bytes: int = 20_000_000
    # Token buckets per route; None turns the limit off.
    run_limit_per_10s: int | None = 1000
    status_limit_per_10s: int | None = 2000
    # RunPod tries a webhook three times, 10 s apart.
    webhook_attempts: int = 3
    webhook_retry_delay_s: float = 10.0
    webhook_timeout_s: float = 10.0
    # The worker-facing API: workers present this as RUNPOD_AI_API_KEY (never logged).
    worker_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    # How long job-take and job-stop hold a poll open (the SDK gives up after 90 s).
    worker_poll_s: float = 20.0
    # The result size RunPod takes (runpod/serverless/modules/rp_tips.py: 20 MB).
    max_result_bytes: int = 20_000_000

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.execution_timeout_ms <= 0 or self.ttl_ms <= 0:
            raise ValueError("execution_timeout_ms and ttl_ms must be positive")
        if self.webhook_attempts < 1:
            raise ValueError("webhook_attempts must be at least 1")
        if not self.endpoint_id or "/" in self.endpoint_id:
            raise ValueError("endpoint_id must be a non-empty path segment")
