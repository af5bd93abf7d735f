"""The worker's settings, read from the environment once at start."""

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from handler.contract.images import MAX_PIXELS
from handler.workflow import packaged_workflows_dir

# The packaged graphs; in the source tree (and an editable install) the repo's comfy_workflows/.
REPO_WORKFLOWS_DIR = packaged_workflows_dir()


class HandlerSettings(BaseSettings):
    """Everything the worker can be told; names match the environment variables."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    comfy_api_url: str = "http://127.0.0.1:8188"
    comfy_workflow: str = "flux2_klein_9b_i2i"
    # Unset: the graphs shipped in the package (handler/workflows).
    comfy_workflows_dir: Path = Field(default_factory=packaged_workflows_dir)
    # ComfyUI's install folder when it runs beside the worker: the job's files are removed there.
    comfy_root: Path | None = None
    network_volume_path: Path = Path("/runpod-volume")
    comfy_startup_timeout_s: float = 180.0
    comfy_job_timeout_s: float = 540.0
    comfy_http_timeout_s: float = 30.0
    comfy_poll_interval_s: float = 0.5
    comfy_warmup: bool = False
    allow_private_image_urls: bool = False
    image_max_bytes: int = 20_000_000
    image_max_pixels: int = MAX_PIXELS
    image_fetch_timeout_s: float = 30.0
    progress_interval_s: float = 1.0
