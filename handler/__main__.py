"""`python -m handler`: start the RunPod worker (or its local test modes, as the SDK documents).

RunPod's SDK reads its own flags: `--test_input '{...}'`, `--rp_serve_api`; without either and
outside RunPod it runs `test_input.json` from the working directory.
"""

import logging
import os
import sys
import threading
from typing import Any

import runpod

from handler.config import HandlerSettings
from handler.worker import Worker
from handler.workflow import WorkflowError

log = logging.getLogger("handler")


def report_progress(job: dict[str, Any], payload: dict[str, Any]) -> None:
    """Forward progress to RunPod when running there; log it locally."""
    if os.environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        runpod.serverless.progress_update(job, payload)
    else:
        log.info("job %s progress %s", job.get("id"), payload)


def main() -> int:
    """Start the worker; exit 2 when the configured graph cannot be used."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # urllib3 warns of an image host's malformed headers with the whole URL (a presigned URL's
    # signature) and a traceback; the job's own sentence says what failed.
    logging.getLogger("urllib3.connection").setLevel(logging.ERROR)
    settings = HandlerSettings()
    try:
        worker = Worker.from_settings(settings, report_progress)
    except WorkflowError as exc:
        log.error("cannot start: %s", exc)
        return 2
    # ComfyUI is awaited beside the SDK, not before it: a bad job is answered at once.
    threading.Thread(target=worker.start_up, name="comfy-start-up", daemon=True).start()
    runpod.serverless.start({"handler": worker.handle_async})
    return 0


if __name__ == "__main__":
    sys.exit(main())
