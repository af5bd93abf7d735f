#!/usr/bin/env bash
# Run the GPU worker once, locally, on handler/test_input.json (RunPod's local test mode).
# With COMFY_API_URL unset it starts the project's ComfyUI protocol server on a free port: a
# stand-in that speaks ComfyUI's API and returns the scaled input instead of a generated image.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "worker-demo: run the set-up command from README.md first" >&2; exit 2; }

server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true; }
trap cleanup EXIT

if [ -z "${COMFY_API_URL:-}" ]; then
    port=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    root=$(mktemp -d)
    .venv/bin/klein comfy-standin --port "$port" --root "$root" >"$root/server.log" 2>&1 &
    server_pid=$!
    export COMFY_API_URL="http://127.0.0.1:$port" COMFY_ROOT="$root"
    echo "worker-demo: ComfyUI protocol server at $COMFY_API_URL"
fi

export COMFY_STARTUP_TIMEOUT_S="${COMFY_STARTUP_TIMEOUT_S:-20}"
cd handler
"../$PY" -m handler 2>&1 | "../$PY" ../scripts/summarize_job_log.py
