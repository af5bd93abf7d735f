"""The dev tools as a user reaches them: `klein endpoint` and `klein comfy-standin`, added to
klein's command line by the `klein.devtools` entry points (orchestrator/ never imports them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.integration.clikit import klein

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 20


def test_klein_endpoint_help_comes_from_the_dev_tools():
    done = klein("endpoint", "--help", database_url=None, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "RunPod Serverless's REST API" in done.stdout
    assert "--endpoint-id" in done.stdout


def test_klein_comfy_standin_answers_as_comfyui_and_stops_on_ctrl_c(tmp_path: Path):
    command = [sys.executable, "-m", "orchestrator", "comfy-standin", "--port", "0"]
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    process = subprocess.Popen(
        [*command, "--root", str(tmp_path)], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        banner = process.stdout.readline()
        url = banner.split(" on ", 1)[1].split(" ", 1)[0]
        stats = requests.get(f"{url}/system_stats", timeout=TIMEOUT_S)
        assert stats.json()["system"]["comfyui_version"] == "0.33.0"
        info = requests.get(f"{url}/object_info/LoadImage", timeout=TIMEOUT_S).json()
        assert "LoadImage" in info
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()
    assert process.returncode == 0
    assert (tmp_path / "input").is_dir()
