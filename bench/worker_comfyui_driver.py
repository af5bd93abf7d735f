"""Runs jobs through runpod-workers/worker-comfyui's `handler(job)`, the way RunPod calls it, and
writes each job's wall time. Started by `handler_overhead.py` with worker-comfyui's own Python (a
venv under /tmp that has its requirements); it imports nothing from this project.

    python worker_comfyui_driver.py CHECKOUT COMFY_HOST

It reads one job (JSON) per line on stdin and answers each with one line on stdout, so the
benchmark can interleave its jobs with ours (the machine's load then weighs on both alike).

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
    checkout, comfy_host = sys.argv[1:3]
    answers = sys.stdout
    with contextlib.redirect_stdout(io.StringIO()):  # its import-time prints
        module = load_handler(Path(checkout), comfy_host)
    for line in sys.stdin:
        job = json.loads(line)
        with contextlib.redirect_stdout(io.StringIO()):  # its progress prints, off our pipe
            started, cpu_started = time.perf_counter(), time.process_time()
            result = module.handler(job)
            wall_s, cpu_s = time.perf_counter() - started, time.process_time() - cpu_started
        answer = {"wall_s": wall_s, "cpu_s": cpu_s, "files": output_names(result)}
        answer["error"] = result.get("error")
        answers.write(json.dumps(answer) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
