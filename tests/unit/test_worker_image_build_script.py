"""scripts/build_worker.py: options, build arguments and the build-then-push story, run against a
recording stand-in of the Docker SDK client (no engine needed)."""

import importlib.util
import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from docker.errors import DockerException

REPO = Path(__file__).resolve().parents[2]


def _load_build_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_worker", REPO / "scripts/build_worker.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


bw = _load_build_worker()
DEFAULT_REF = bw.DEFAULT_COMFYUI_REF


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
    assert bw.build_args(options) == {"COMFYUI_REF": DEFAULT_REF, "BAKE_MODELS": "0"}


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
    assert build["buildargs"] == {"COMFYUI_REF": DEFAULT_REF, "BAKE_MODELS": "0"}
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
    assert f"build-arg:  COMFYUI_REF={DEFAULT_REF}" in out.getvalue()
