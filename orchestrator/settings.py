"""The orchestrator's settings, read from the environment once, at the entry point."""

import socket
import uuid
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import platformdirs
from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KLEIN_TEMPLATE_ID = "82064257-1bef-45d8-a6ba-715f33c887cc"
DEFAULT_RUNPOD_API_BASE = "https://api.runpod.ai/v2"
# The longest duration any setting or option takes (about 31 years): every wait stays a number
# that timers and PostgreSQL's intervals hold (LEASE_S=inf made every claim fail).
MAX_SECONDS = 10**9


def default_klein_home() -> Path:
    """The per-user data folder: ~/.local/share/klein on Linux, its equivalent elsewhere."""
    return platformdirs.user_data_path("klein", appauthor=False)


def default_worker_id() -> str:
    """A name for this process in `locked_by`: host, and a random part so restarts differ."""
    return f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"


class Settings(BaseSettings):
    """Everything the orchestrator can be told; names match the environment variables."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)

    database_url: str | None = None
    # How long a connection to the database may take (libpq's connect_timeout, whole seconds; libpq
    # waits at least 2): past it a command fails naming the host instead of hanging on a server
    # that accepts but never answers. A connect_timeout in DATABASE_URL wins.
    database_connect_timeout_s: int = Field(default=10, ge=1)
    klein_template_id: str = KLEIN_TEMPLATE_ID
    runpod_api_key: SecretStr | None = None
    runpod_endpoint_id: str | None = None
    runpod_api_base: str = DEFAULT_RUNPOD_API_BASE
    openrouter_api_key: SecretStr | None = None
    openrouter_base_url: str = "https://openrouter.ai/api/v1"
    # No ceiling of ours by default: a paid key's limits are OpenRouter's to enforce, and a 429
    # slows the client down until it recovers. Free variants (":free") allow 20 per minute.
    # A vision title takes seconds: 64 in flight capped a burst at 13.7 jobs/s with 1.5 s
    # translations and 3 s titles, 256 did not (bench/full_path.py; docs/benchmarks.md).
    openrouter_max_concurrency: int = Field(default=256, ge=1)
    openrouter_rpm: int = Field(default=0, ge=0)  # 0: no per-minute limit of ours
    translate_model: str = "openai/gpt-4o-mini"
    title_model: str = "openai/gpt-4o-mini"
    # What the title model is shown: "url", the stored image's public URL (as the n8n workflow
    # did; the model's provider fetches it), or "thumbnail", a 512-pixel JPEG sent inline, which
    # costs a full decode of every output here (~12 ms for 1 MP). Default: "url" with Supabase
    # Storage, "thumbnail" with local storage, whose URLs the provider usually cannot reach.
    title_image: Literal["url", "thumbnail"] | None = None
    storage_backend: str | None = None  # "supabase" or "local"; default from SUPABASE_URL
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None
    storage_bucket: str = "works"
    # Local state lives in one per-user folder, whatever the current directory; KLEIN_HOME moves
    # it, LOCAL_STORAGE_DIR and LOCAL_DATABASE_DIR move one part each.
    klein_home: Path = Field(default_factory=default_klein_home)
    local_storage_dir: Path = Field(default_factory=lambda data: data["klein_home"] / "storage")
    # The embedded defaults (no DATABASE_URL; no RunPod endpoint): see orchestrator/embedded.py.
    local_database_dir: Path = Field(default_factory=lambda data: data["klein_home"] / "pgdata")
    local_endpoint_workers: int = Field(default=1, ge=1)
    public_base_url: str | None = None
    webhook_secret: SecretStr | None = None
    max_in_flight: int = Field(default=16, ge=1)
    # klein serve processes calling the same RunPod endpoint: each keeps to its share of
    # RunPod's per-endpoint limits (1,000 /run and 2,000 /status calls per 10 s).
    replicas: int = Field(default=1, ge=1, le=100)
    # Threads for the jobs' CPU-bound work (decoding outputs); more finish a burst sooner but
    # stall the event loop longer (orchestrator/cpu.py).
    cpu_threads: int = Field(default=1, ge=1)
    # Finished outputs held at once, from the /status answer that carries one until its image is
    # unpacked (orchestrator/outputs.py): memory stays flat however many jobs finish together.
    output_slots: int = Field(default=4, ge=1)
    # Megabytes of output images uploading at once (orchestrator/uploads.py): however slow
    # Storage is, uploads neither cap the pipeline at a few jobs/s nor grow memory.
    max_uploading_mb: int = Field(default=64, ge=1)
    job_timeout_s: float = Field(default=600.0, gt=0)
    sweep_interval_s: float = Field(default=5.0, gt=0)
    lease_s: float = Field(default=30.0, gt=0)
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    poll_min_interval_s: float = Field(default=0.5, gt=0)
    # With PUBLIC_BASE_URL (RunPod's completion webhook on), a poll that finds a job over waits
    # this long for the webhook, which carries the output, before reading it from /status.
    webhook_grace_s: float = Field(default=2.0, ge=0)
    # How long the webhook waits for an output slot to keep its body in (the body waits unread
    # in the socket meanwhile); past it the job reads its output from /status instead.
    webhook_slot_wait_s: float = Field(default=5.0, ge=0)
    # How long a completion webhook's body may take to arrive (RunPod sends megabytes at once):
    # a sender trickling it would otherwise hold an output slot, and a connection, for ever.
    webhook_body_deadline_s: float = Field(default=30.0, gt=0)
    # The same for the intake webhook's body (a few hundred bytes, sent at once by Supabase).
    intake_body_deadline_s: float = Field(default=5.0, gt=0)
    poll_max_interval_s: float = Field(default=10.0, gt=0)
    # works.progress (what a running job is doing) is written at most this often per job.
    progress_write_interval_s: float = Field(default=1.0, ge=0)
    max_attempts: int = Field(default=3, ge=1)
    # A job's retry budget (stored in generation_jobs.retries): transient and unexpected errors
    # spend one each; waiting for an operator spends none.
    max_retries: int = Field(default=8, ge=0)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_cap_s: float = Field(default=120.0, gt=0)
    # Claims of a job whose holder stopped without writing an outcome (a crash, an expired lease):
    # past this many the job fails instead of taking down process after process.
    max_abandoned: int = Field(default=10, ge=1)
    operator_retry_s: float = Field(default=30.0, gt=0)
    # After a /run whose answer was lost: how long to wait for the job's completion webhook
    # (it would adopt the RunPod job) before submitting again. Only with PUBLIC_BASE_URL.
    submission_unknown_wait_s: float = Field(default=90.0, ge=0)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    klein_host: str = "127.0.0.1"
    klein_port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port
    # Connections (and requests under way) the HTTP face holds at once; past it new requests are
    # answered 503 at once (uvicorn's limit_concurrency), so senders that never finish cannot
    # pile up without bound. Each job in flight may have a completion webhook on its way.
    http_max_connections: int = Field(default=1000, ge=1)
    # How long an idle kept-alive connection stays open between requests (uvicorn's default).
    http_keep_alive_s: int = Field(default=5, ge=1)
    worker_id: str = Field(default_factory=default_worker_id)
    # The HTTP face's defences (docs/security.md): /metrics wants `Authorization: Bearer
    # <METRICS_TOKEN>` when set; RunPod's completion webhook carries the whole job result (a
    # base64 image, several MB), so its body cap is large but still a cap.
    metrics_token: SecretStr | None = None
    runpod_webhook_max_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # The dashboard at `/` (orchestrator/dashboard/): with DASHBOARD_TOKEN set, whoever presents
    # it; unset, clients on this machine only. DASHBOARD_JOBS: how many latest jobs it lists.
    dashboard_token: SecretStr | None = None
    dashboard_jobs: int = Field(default=50, ge=1, le=500)

    @field_validator("*")
    @classmethod
    def _durations_bounded(cls, value: object, info: ValidationInfo) -> object:
        """Every duration (a name ending in _s) at most MAX_SECONDS."""
        name = info.field_name or ""
        if name.endswith("_s") and isinstance(value, int | float) and value > MAX_SECONDS:
            raise ValueError(f"must be at most {MAX_SECONDS:,} seconds")
        return value

    @field_validator("public_base_url", mode="before")
    @classmethod
    def _public_url(cls, value: object) -> object:
        """PUBLIC_BASE_URL: empty is unset; else an http(s) URL of a host, with no credentials,
        query or fragment, since RunPod's webhook URL and stored images' URLs are built on it."""
        if not isinstance(value, str):
            return value
        if value == "":
            return None
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 (raises ValueError for a port out of range)
        except ValueError as exc:
            raise ValueError(f"not a URL ({exc})") from None
        if value != value.strip() or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL naming a host")
        if parts.username is not None or parts.query or parts.fragment:
            raise ValueError("must have no user, password, query or fragment")
        return value

    @property
    def titles_from_url(self) -> bool:
        """Whether the title model is shown the stored image's URL (TITLE_IMAGE)."""
        if self.title_image:
            return self.title_image == "url"
        return self.uses_supabase_storage

    @property
    def uses_supabase_storage(self) -> bool:
        """Supabase Storage when asked for, or when a Supabase URL is set and nothing else is."""
        if self.storage_backend:
            return self.storage_backend == "supabase"
        return bool(self.supabase_url)
