#!/usr/bin/env bash
# Container entry point: start ComfyUI in the background, then become the RunPod handler.
# The handler waits for ComfyUI itself (bounded by COMFY_STARTUP_TIMEOUT_S) and fails jobs
# clearly if ComfyUI dies, so this script does not wait or supervise.
# Arguments are passed on to the handler (e.g. --rp_serve_api, --test_input '{...}').
set -euo pipefail

log() { echo "worker: $*"; }
die() { echo "worker: $*" >&2; exit 1; }

COMFY_ROOT="${COMFY_ROOT:-/comfyui}"
COMFY_PYTHON="${COMFY_PYTHON:-/opt/comfyui-venv/bin/python}"
COMFY_EXTRA_MODEL_PATHS="${COMFY_EXTRA_MODEL_PATHS:-/app/worker/extra_model_paths.yaml}"
# ComfyUI expands this variable in extra_model_paths.yaml, so it must be exported.
export NETWORK_VOLUME_PATH="${NETWORK_VOLUME_PATH:-/runpod-volume}"

[[ -f "${COMFY_ROOT}/main.py" ]] || die "no ComfyUI at COMFY_ROOT=${COMFY_ROOT}"
[[ -x "${COMFY_PYTHON}" ]] || die "COMFY_PYTHON=${COMFY_PYTHON} is not an executable"
[[ -f "${COMFY_EXTRA_MODEL_PATHS}" ]] || die "no model paths file at ${COMFY_EXTRA_MODEL_PATHS}"

if [[ -d "${NETWORK_VOLUME_PATH}/models" ]]; then
    log "models on the network volume: ${NETWORK_VOLUME_PATH}/models"
else
    log "no ${NETWORK_VOLUME_PATH}/models; only models baked into ${COMFY_ROOT}/models are used"
fi

# Optional extra ComfyUI flags (e.g. "--highvram"), split on spaces.
read -r -a extra_args <<< "${COMFY_EXTRA_ARGS:-}"

log "starting ComfyUI from ${COMFY_ROOT}"
(
    cd "${COMFY_ROOT}"
    exec "${COMFY_PYTHON}" -u main.py \
        --listen 127.0.0.1 \
        --port 8188 \
        --disable-auto-launch \
        --disable-api-nodes \
        --extra-model-paths-config "${COMFY_EXTRA_MODEL_PATHS}" \
        "${extra_args[@]}"
) &
log "ComfyUI pid $!; starting the handler"

exec python -u -m handler "$@"
