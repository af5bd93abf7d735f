"""Runs jobs through runpod-workers/worker-comfyui's `handler(job)`, the way RunPod calls it, and
writes each job's wall time. Started by `handler_overhead.py` with worker-comfyui's own Python (a
venv under /tmp that has its requirements); it imports nothing from this project.

    python worker_comfyui_driver.py CHECKOUT COMFY_HOST JOBS.json RESULTS.json

CHECKOUT is the folder holding worker-comfyui's `handler.py` (and `src/network_volume.py`), a copy
made for the measurement only. COMFY_HOST is `host:port` of the ComfyUI to use: worker-comfyui
5.8.5 fixes it to 127.0.0.1:8188 in the module, so the driver sets the module's value.
"""

import contextlib
import importlib.util
import io
import json
import sys
import time
from pathlib import Path


def load_handler(checkout: Path, comfy_host: str) -> object:
    """worker-comfyui's handler module, imported under a name of its own."""
    sys.path[:0] = [str(checkout), str(checkout / "src")]
    spec = importlib.util.spec_from_file_location("worker_comfyui_handler", checkout / "handler.py")
    if spec is None or spec.loader is None:
        raise SystemExit(f"no handler.py in {checkout}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.COMFY_HOST = comfy_host
    return module


def output_names(result: dict) -> list[str]:
    """The file names of the images a result returned."""
    return [image.get("filename", "") for image in result.get("images", [])]


def main() -> int:
    checkout, comfy_host, jobs_path, results_path = sys.argv[1:5]
    module = load_handler(Path(checkout), comfy_host)
    jobs = json.loads(Path(jobs_path).read_text())
    results = []
    for job in jobs:
        sink = io.StringIO()  # its progress prints, kept off the terminal
        with contextlib.redirect_stdout(sink):
            started = time.perf_counter()
            result = module.handler(job)
            wall_s = time.perf_counter() - started
        results.append({"wall_s": wall_s, "files": output_names(result), "error": result.get("error")})
    Path(results_path).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
