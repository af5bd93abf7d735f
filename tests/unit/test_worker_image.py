"""The GPU worker image: Dockerfile.worker, its build context, start script, model paths and
the build-and-push script. No Docker engine is needed: the Dockerfile is read as text, the
context is computed with the Docker SDK's own .dockerignore matcher, start.sh runs against
stand-in executables, and build_worker runs against a recording stand-in of the SDK client."""

import importlib.util
import io
import json
import os
import posixpath
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from docker.errors import DockerException
from docker.utils import exclude_paths

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.worker"
START_SH = REPO / "worker" / "start.sh"
MODEL_PATHS = REPO / "worker" / "extra_model_paths.yaml"


def _load_build_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_worker", REPO / "scripts/build_worker.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


bw = _load_build_worker()


# --- reading Dockerfile.worker ---------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of Dockerfile.worker, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    for line in logical:
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def arg_defaults() -> dict[str, str]:
    """Default values of every ARG."""
    defaults = {}
    for word, rest in instructions():
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value.strip('"')
    return defaults


def env_values() -> dict[str, str]:
    """Values set by ENV (KEY=VALUE form)."""
    values = {}
    for word, rest in instructions():
        if word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                values[key] = value
    return values


def copies() -> list[tuple[list[str], str]]:
    """(sources, absolute destination) of every COPY, resolved against WORKDIR."""
    workdir = "/"
    result = []
    for word, rest in instructions():
        if word == "WORKDIR":
            workdir = posixpath.join(workdir, rest)
        elif word == "COPY":
            parts = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
            parts = [p for p in parts if not p.startswith("--")]
            result.append((parts[:-1], posixpath.normpath(posixpath.join(workdir, parts[-1]))))
    return result


def destination_of(source: str) -> str:
    """Where Dockerfile.worker copies a repository folder to."""
    for sources, dest in copies():
        if source in sources:
            return dest
    raise AssertionError(f"{source} is not copied")


def build_context() -> set[str]:
    """Paths the Docker SDK sends as the build context, honouring .dockerignore as it does."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return set(exclude_paths(str(REPO), patterns, dockerfile="Dockerfile.worker"))


# --- Dockerfile and build context ------------------------------------------------------------


def test_every_copy_source_exists_and_reaches_the_build_context() -> None:
    context = build_context()
    sources = [source for sources, _ in copies() for source in sources]
    assert sources, "Dockerfile.worker copies nothing"
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY source {source} is missing from the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files = [f for f in files if "__pycache__" not in f.parts]
        assert files, f"COPY source {source} has no files"
        for file in files:
            relative = file.relative_to(REPO).as_posix()
            assert relative in context, f"{relative} is left out by .dockerignore"


def test_build_context_leaves_out_local_state_and_other_parts() -> None:
    context = build_context()
    for top in (".venv", ".git", "tests", "docs", "bench", ".klein", "orchestrator", "scripts"):
        assert not [p for p in context if p == top or p.startswith(top + "/")], top
    assert "tests/unit/test_worker_image.py" not in context
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]


def test_project_metadata_needed_by_pip_install_is_copied() -> None:
    # pip install ".[handler]" reads pyproject.toml, and setuptools opens its readme file.
    copied = {source for sources, _ in copies() for source in sources}
    assert {"pyproject.toml", "README.md", "handler/"} <= copied
    assert any(
        word == "RUN" and 'pip install ".[handler]"' in rest for word, rest in instructions()
    )


def test_base_image_is_a_pinned_cuda_12_8_tag() -> None:
    base = arg_defaults()["BASE_IMAGE"]
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    name, _, tag = base.rpartition(":")
    assert name == "nvidia/cuda"
    assert tag.startswith("12.8.")
    assert tag != "latest"


def test_comfyui_is_cloned_at_the_pinned_release() -> None:
    defaults = arg_defaults()
    assert defaults["COMFYUI_REF"] == "v0.33.0" == bw.DEFAULT_COMFYUI_REF
    clone = [rest for word, rest in instructions() if word == "RUN" and "git clone" in rest]
    assert len(clone) == 1
    assert '--depth 1 --branch "${COMFYUI_REF}"' in clone[0]
    assert '"${COMFY_ROOT}"' in clone[0]


def test_torch_is_pinned_to_cuda_12_8_wheels() -> None:
    defaults = arg_defaults()
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cu128"
    for name in ("TORCH_VERSION", "TORCHVISION_VERSION", "TORCHAUDIO_VERSION"):
        assert defaults[name][0].isdigit(), name
    install = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert '"torch==${TORCH_VERSION}"' in install
    # ComfyUI's requirements are installed under the same pins, so torch is not replaced.
    assert '-r "${COMFY_ROOT}/requirements.txt" -c /tmp/torch-pins.txt' in install


def test_no_image_or_ref_is_latest() -> None:
    for word, rest in instructions():
        if word in {"FROM", "ARG"}:
            assert ":latest" not in rest, rest
            assert not rest.endswith("=latest"), rest


def test_entrypoint_runs_the_copied_start_script() -> None:
    entry = [json.loads(rest) for word, rest in instructions() if word == "ENTRYPOINT"]
    assert not [word for word, _ in instructions() if word == "CMD"]
    assert entry == [[destination_of("worker/") + "/start.sh"]]


def test_environment_points_at_the_copied_files() -> None:
    env = env_values()
    assert env["COMFY_WORKFLOWS_DIR"] == destination_of("comfy_workflows/")
    assert env["COMFY_EXTRA_MODEL_PATHS"] == destination_of("worker/") + "/extra_model_paths.yaml"
    assert env["NETWORK_VOLUME_PATH"] == "/runpod-volume"
    assert env["COMFY_API_URL"] == "http://127.0.0.1:8188"
    assert env["COMFY_WORKFLOW"] == "flux2_klein_9b_i2i"
    clone = next(rest for word, rest in instructions() if word == "RUN" and "git clone" in rest)
    assert env["COMFY_ROOT"] == "/comfyui"
    assert "${COMFY_ROOT}" in clone


def test_baked_models_land_in_comfyui_model_folders() -> None:
    bake = next(rest for word, rest in instructions() if word == "RUN" and "BAKE_MODELS" in rest)
    assert arg_defaults()["BAKE_MODELS"] == "0"
    for target in (
        "diffusion_models/flux-2-klein-9b-fp8.safetensors",
        "text_encoders/qwen_3_8b_fp8mixed.safetensors",
        "vae/flux2-vae.safetensors",
    ):
        assert f"fetch {target} " in bake
    for arg in bw.MODEL_URL_ARGS:
        assert arg_defaults()[arg].startswith("https://huggingface.co/"), arg


# --- start.sh ----------------------------------------------------------------------------------


def test_start_script_is_valid_bash_and_executable() -> None:
    subprocess.run(["bash", "-n", str(START_SH)], check=True)
    assert START_SH.stat().st_mode & stat.S_IXUSR
    assert START_SH.read_text().startswith("#!/usr/bin/env bash\n")


def _executable(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def stand_ins(tmp_path: Path) -> dict[str, Any]:
    """A ComfyUI folder and two recording executables: ComfyUI's python and the handler's."""
    record = tmp_path / "record"
    record.mkdir()
    comfy_root = tmp_path / "comfyui"
    comfy_root.mkdir()
    (comfy_root / "main.py").write_text("")
    _executable(
        tmp_path / "comfy-python",
        'pwd > "$RECORD/comfy.cwd"\nenv > "$RECORD/comfy.env"\n'
        'printf "%s\\n" "$@" > "$RECORD/comfy.tmp"\n'
        'mv "$RECORD/comfy.tmp" "$RECORD/comfy.args"\n',
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The handler stand-in waits (bounded) for ComfyUI's stand-in so both records exist.
    _executable(
        bin_dir / "python",
        'printf "%s\\n" "$@" > "$RECORD/handler.args"\n'
        'for _ in $(seq 1 400); do [ -f "$RECORD/comfy.args" ] && exit 0; sleep 0.05; done\n'
        "exit 3\n",
    )
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RECORD": str(record),
        "COMFY_ROOT": str(comfy_root),
        "COMFY_PYTHON": str(tmp_path / "comfy-python"),
        "COMFY_EXTRA_MODEL_PATHS": str(MODEL_PATHS),
        "NETWORK_VOLUME_PATH": str(tmp_path / "volume"),
    }
    return {"env": env, "record": record, "comfy_root": comfy_root}


def run_start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(START_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_start_launches_comfyui_then_becomes_the_handler(stand_ins: dict[str, Any]) -> None:
    env = {**stand_ins["env"], "COMFY_EXTRA_ARGS": "--highvram --fast"}
    result = run_start(env, "--rp_serve_api", "--rp_api_host", "0.0.0.0")
    assert result.returncode == 0, result.stderr
    record: Path = stand_ins["record"]
    comfy_args = record.joinpath("comfy.args").read_text().split()
    assert comfy_args[:2] == ["-u", "main.py"]
    for flag in ("--disable-auto-launch", "--disable-api-nodes", "--highvram", "--fast"):
        assert flag in comfy_args
    assert comfy_args[comfy_args.index("--listen") + 1] == "127.0.0.1"
    assert comfy_args[comfy_args.index("--port") + 1] == "8188"
    assert comfy_args[comfy_args.index("--extra-model-paths-config") + 1] == str(MODEL_PATHS)
    assert record.joinpath("comfy.cwd").read_text().strip() == str(stand_ins["comfy_root"])
    assert record.joinpath("handler.args").read_text().split() == [
        "-u", "-m", "handler", "--rp_serve_api", "--rp_api_host", "0.0.0.0",
    ]  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines
    assert all(line.startswith("worker: ") for line in lines)


def test_start_exports_the_default_volume_path_for_comfyui(stand_ins: dict[str, Any]) -> None:
    env = {k: v for k, v in stand_ins["env"].items() if k != "NETWORK_VOLUME_PATH"}
    result = run_start(env)
    assert result.returncode == 0, result.stderr
    comfy_env = stand_ins["record"].joinpath("comfy.env").read_text().splitlines()
    assert "NETWORK_VOLUME_PATH=/runpod-volume" in comfy_env


def test_start_refuses_without_comfyui_and_starts_nothing(stand_ins: dict[str, Any]) -> None:
    (stand_ins["comfy_root"] / "main.py").unlink()
    result = run_start(stand_ins["env"])
    assert result.returncode == 1
    assert result.stderr.startswith("worker: no ComfyUI at COMFY_ROOT=")
    assert list(stand_ins["record"].iterdir()) == []


# --- extra_model_paths.yaml ------------------------------------------------------------------


def test_model_paths_cover_the_graph_folders_on_the_network_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = yaml.safe_load(MODEL_PATHS.read_text())
    assert len(config) == 1
    (section,) = config.values()
    folders = {key for key in section if key != "base_path"}
    assert {"diffusion_models", "text_encoders", "vae"} <= folders
    assert {"unet", "clip", "checkpoints", "loras"} <= folders
    # ComfyUI expands variables in base_path only (utils/extra_config.py); resolve it the same way.
    assert not any("$" in section[folder] for folder in folders)
    monkeypatch.setenv("NETWORK_VOLUME_PATH", "/vol")
    base = os.path.expandvars(section["base_path"])
    assert posixpath.join(base, section["diffusion_models"]) == "/vol/models/diffusion_models"
    assert posixpath.join(base, section["vae"]) == "/vol/models/vae"


# --- scripts/build_worker.py -------------------------------------------------------------------


def test_image_needs_a_tag_that_is_not_latest() -> None:
    for bad in ("me/klein", "me/klein:latest", "Me/Klein:1", "me/klein@sha256:abc"):
        with pytest.raises(SystemExit) as exit_info:
            bw.parse_options(["--image", bad], {})
        assert exit_info.value.code == 2, bad
    with pytest.raises(SystemExit):
        bw.parse_options([], {})


def test_plan_splits_registry_port_from_tag() -> None:
    build = bw.plan(bw.parse_options(["--image", "localhost:5000/team/klein:0.2"], {}))
    assert (build.repository, build.tag) == ("localhost:5000/team/klein", "0.2")
    assert build.image == "localhost:5000/team/klein:0.2"
    assert build.dockerfile == "Dockerfile.worker"
    assert build.platform == "linux/amd64"
    assert build.context_dir == REPO
    assert build.push is True


def test_default_build_args_pin_comfyui_and_read_models_from_the_volume() -> None:
    options = bw.parse_options(["--image", "me/klein:1"], {"MODEL_VAE_URL": "https://e/vae"})
    assert bw.build_args(options) == {"COMFYUI_REF": "v0.33.0", "BAKE_MODELS": "0"}


def test_baking_passes_model_links_from_options_over_environment() -> None:
    env = {"MODEL_VAE_URL": "https://env/vae", "MODEL_DIFFUSION_URL": "https://env/dit"}
    argv = ["--image", "me/klein:1", "--bake-models", "--model-url-vae", "https://cli/vae"]
    args = bw.build_args(bw.parse_options([*argv, "--comfyui-ref", "v0.34.0"], env))
    assert args == {
        "COMFYUI_REF": "v0.34.0",
        "BAKE_MODELS": "1",
        "MODEL_VAE_URL": "https://cli/vae",
        "MODEL_DIFFUSION_URL": "https://env/dit",
    }


def test_extra_build_args_pass_through_but_cannot_override_managed_ones() -> None:
    argv = ["--image", "me/klein:1", "--build-arg", "TORCH_INDEX_URL=https://t/cu130"]
    assert bw.build_args(bw.parse_options(argv, {}))["TORCH_INDEX_URL"] == "https://t/cu130"
    with pytest.raises(SystemExit):
        bw.parse_options(["--image", "me/klein:1", "--build-arg", "COMFYUI_REF=master"], {})


class FakeDockerClient:
    """Stand-in for docker.DockerClient: its `.api` low-level calls are recorded and answered
    with canned decoded streams, as the real SDK yields them with decode=True."""

    def __init__(
        self, build_stream: list[dict[str, Any]], push_stream: list[dict[str, Any]]
    ) -> None:
        self.api = self
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self._build_stream = build_stream
        self._push_stream = push_stream

    def build(self, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("build", kwargs))
        return iter(self._build_stream)

    def push(self, repository: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("push", {"repository": repository, **kwargs}))
        return iter(self._push_stream)


BUILD_OK = [
    {"stream": "Step 1/30 : ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04\n"},
    {"status": "Downloading", "progressDetail": {"current": 1, "total": 9}, "progress": "[=> ]"},
    {"aux": {"ID": "sha256:0123"}},
    {"stream": "Successfully tagged me/klein:1\n"},
]
PUSH_OK = [
    {"status": "The push refers to repository [docker.io/me/klein]"},
    {"status": "Pushing", "progressDetail": {"current": 5}, "progress": "[==> ]", "id": "ab"},
    {"status": "Pushed", "progressDetail": {}, "id": "ab"},
    {"status": "1: digest: sha256:4567 size: 1234"},
]  # fmt: skip


def run_main(
    argv: list[str], env: dict[str, str], client: FakeDockerClient
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = bw.main(argv, env, lambda _env: client, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_main_builds_then_pushes_with_credentials_from_the_environment() -> None:
    client = FakeDockerClient(BUILD_OK, PUSH_OK)
    env = {"DOCKER_USERNAME": "me", "DOCKER_PASSWORD": "s3cret"}
    code, out, err = run_main(["--image", "me/klein:1"], env, client)
    assert (code, err) == (0, "")
    assert [name for name, _ in client.calls] == ["build", "push"]
    build = client.calls[0][1]
    assert build["path"] == str(REPO)
    assert build["dockerfile"] == "Dockerfile.worker"
    assert build["tag"] == "me/klein:1"
    assert build["platform"] == "linux/amd64"
    assert build["buildargs"] == {"COMFYUI_REF": "v0.33.0", "BAKE_MODELS": "0"}
    assert build["decode"] is True
    assert client.calls[1][1] == {
        "repository": "me/klein",
        "tag": "1",
        "stream": True,
        "decode": True,
        "auth_config": {"username": "me", "password": "s3cret"},
    }
    for shown in ("Step 1/30", "ab: Pushed", "digest: sha256:4567", "pushed me/klein:1"):
        assert shown in out
    for byte_counter in ("[=> ]", "[==> ]"):
        assert byte_counter not in out
    assert "s3cret" not in out


def test_main_without_credentials_leaves_them_to_the_local_docker_config() -> None:
    client = FakeDockerClient(BUILD_OK, PUSH_OK)
    assert run_main(["--image", "me/klein:1"], {}, client)[0] == 0
    assert client.calls[1][1]["auth_config"] is None


def test_no_push_builds_only() -> None:
    client = FakeDockerClient(BUILD_OK, PUSH_OK)
    code, out, _ = run_main(["--image", "me/klein:1", "--no-push"], {}, client)
    assert code == 0
    assert [name for name, _ in client.calls] == ["build"]
    assert "built me/klein:1" in out
    assert "pushed" not in out


def test_build_error_stops_before_push_with_one_line() -> None:
    failing = [
        *BUILD_OK[:1],
        {"errorDetail": {"code": 1}, "error": "The command '/bin/sh -c git clone' returned\n 128"},
    ]
    client = FakeDockerClient(failing, PUSH_OK)
    code, _, err = run_main(["--image", "me/klein:1"], {}, client)
    assert code == 1
    assert [name for name, _ in client.calls] == ["build"]
    assert err == "build_worker: build failed: The command '/bin/sh -c git clone' returned 128\n"


def test_push_error_fails_the_run() -> None:
    client = FakeDockerClient(BUILD_OK, [{"error": "denied: requested access is denied"}])
    code, _, err = run_main(["--image", "me/klein:1"], {}, client)
    assert code == 1
    assert err == "build_worker: push failed: denied: requested access is denied\n"


def test_no_engine_gives_exit_code_2_and_one_line() -> None:
    def unreachable(_env: object) -> None:
        raise DockerException("Error while fetching server API version:\n connection refused")

    out, err = io.StringIO(), io.StringIO()
    code = bw.main(["--image", "me/klein:1"], {}, unreachable, out=out, err=err)
    assert code == 2
    assert err.getvalue().count("\n") == 1
    assert err.getvalue().startswith("build_worker: no Docker engine reachable: Error while")


def test_cli_with_the_real_sdk_and_no_engine_exits_2_with_one_line(tmp_path: Path) -> None:
    # A subprocess: the SDK leaks its socket when the engine is missing, which is harmless
    # for a CLI that exits but would trip this suite's warnings-as-errors.
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts/build_worker.py"), "--image", "me/klein:1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("build_worker: no Docker engine reachable:")
    assert result.stderr.count("\n") == 1


def test_half_given_credentials_are_refused_before_any_engine_call() -> None:
    client = FakeDockerClient(BUILD_OK, PUSH_OK)
    code, _, err = run_main(["--image", "me/klein:1"], {"DOCKER_USERNAME": "me"}, client)
    assert code == 2
    assert client.calls == []
    assert "DOCKER_PASSWORD" in err


def test_dry_run_prints_the_plan_and_contacts_no_engine() -> None:
    def no_engine_wanted(_env: object) -> None:
        raise AssertionError("the engine was contacted")

    out = io.StringIO()
    code = bw.main(["--image", "me/klein:1", "--dry-run"], {}, no_engine_wanted, out=out)
    assert code == 0
    assert "build-arg:  COMFYUI_REF=v0.33.0" in out.getvalue()
