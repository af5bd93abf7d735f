"""Build the GPU worker image from Dockerfile.worker and push it to a registry (Docker SDK).

    python scripts/build_worker.py --image you/klein-worker:0.1.0 [--no-push] [--bake-models]

Needs a reachable Docker engine (DOCKER_HOST or the local socket) and the `deploy` extra
(`pip install ".[deploy]"`). Push credentials come from DOCKER_USERNAME/DOCKER_PASSWORD when
both are set, otherwise from the local Docker config (`docker login`). Exit codes: 0 done,
1 the build or push failed, 2 bad arguments or no Docker engine reachable.
"""

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

try:
    import docker
    from docker.errors import DockerException
    from docker.utils import match_tag
    from requests import RequestException
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("build_worker: the Docker SDK is missing; install it with: pip install '.[deploy]'")

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = "Dockerfile.worker"
PLATFORM = "linux/amd64"
DEFAULT_COMFYUI_REF = "v0.33.0"
# Build argument (also read from the environment variable of that name) -> command-line option.
MODEL_URL_ARGS = {
    "MODEL_DIFFUSION_URL": "--model-url-diffusion",
    "MODEL_TEXT_ENCODER_URL": "--model-url-text-encoder",
    "MODEL_VAE_URL": "--model-url-vae",
}
# Build arguments that have their own option; --build-arg may not set them.
MANAGED_BUILD_ARGS = frozenset({"COMFYUI_REF", "BAKE_MODELS", *MODEL_URL_ARGS})

ClientFactory = Callable[[Mapping[str, str]], Any]


class DeployError(Exception):
    """The build or the push failed; the message is one line for the user."""


@dataclass(frozen=True)
class Options:
    """What the user asked for, after parsing the command line and the environment."""

    image: str
    push: bool = True
    bake_models: bool = False
    comfyui_ref: str = DEFAULT_COMFYUI_REF
    model_urls: Mapping[str, str] = field(default_factory=dict)
    extra_build_args: Mapping[str, str] = field(default_factory=dict)
    no_cache: bool = False
    dry_run: bool = False
    context_dir: Path = REPO_ROOT


@dataclass(frozen=True)
class BuildPlan:
    """Everything the engine is asked to do, decided before talking to it."""

    context_dir: Path
    dockerfile: str
    image: str
    repository: str
    tag: str
    buildargs: Mapping[str, str]
    platform: str
    push: bool
    no_cache: bool


def split_image(image: str) -> tuple[str, str]:
    """Split `repo:tag` (a registry host may carry a port) into repository and tag."""
    repository, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return image, ""
    return repository, tag


def check_image(image: str) -> str | None:
    """Say what is wrong with an image reference, or None when it is usable."""
    _, tag = split_image(image)
    if "@" in image or not match_tag(image):
        return f"not a valid image reference: {image!r} (expected repo:tag)"
    if not tag:
        return f"{image!r} has no tag; give one, e.g. {image}:0.1.0"
    if tag == "latest":
        return "use a versioned tag, not 'latest': RunPod workers cache images by tag"
    return None


def build_args(options: Options) -> dict[str, str]:
    """The build arguments Dockerfile.worker receives for these options."""
    args = dict(options.extra_build_args)
    args["COMFYUI_REF"] = options.comfyui_ref
    args["BAKE_MODELS"] = "1" if options.bake_models else "0"
    if options.bake_models:
        args.update({k: v for k, v in options.model_urls.items() if k in MODEL_URL_ARGS and v})
    return args


def plan(options: Options) -> BuildPlan:
    """Turn the options into one build (and maybe one push) of one tag."""
    repository, tag = split_image(options.image)
    return BuildPlan(
        context_dir=options.context_dir,
        dockerfile=DOCKERFILE,
        image=options.image,
        repository=repository,
        tag=tag,
        buildargs=build_args(options),
        platform=PLATFORM,
        push=options.push,
        no_cache=options.no_cache,
    )


def describe(build: BuildPlan) -> list[str]:
    """Human-readable lines for the plan (no secrets: build arguments hold none)."""
    lines = [
        f"image:      {build.image} ({build.platform})",
        f"context:    {build.context_dir} ({build.dockerfile})",
        f"push:       {'yes' if build.push else 'no'}",
    ]
    lines += [f"build-arg:  {key}={value}" for key, value in sorted(build.buildargs.items())]
    return lines


def auth_config(env: Mapping[str, str]) -> dict[str, str] | None:
    """Push credentials from DOCKER_USERNAME/DOCKER_PASSWORD; None lets the SDK read the config."""
    username, password = env.get("DOCKER_USERNAME", ""), env.get("DOCKER_PASSWORD", "")
    if bool(username) != bool(password):
        raise DeployError("set both DOCKER_USERNAME and DOCKER_PASSWORD, or neither")
    if not username:
        return None
    return {"username": username, "password": password}


def build_log_line(chunk: Mapping[str, Any]) -> str | None:
    """The text to show for one decoded build-stream chunk; raises on a build error."""
    if "error" in chunk:
        raise DeployError(f"build failed: {_one_line(chunk['error'])}")
    if "stream" in chunk:
        return str(chunk["stream"]) or None
    return _status_line(chunk)


def push_log_line(chunk: Mapping[str, Any]) -> str | None:
    """The text to show for one decoded push-stream chunk; raises on a push error."""
    if "error" in chunk:
        raise DeployError(f"push failed: {_one_line(chunk['error'])}")
    return _status_line(chunk)


def _status_line(chunk: Mapping[str, Any]) -> str | None:
    # Chunks with a progress bar are per-layer byte counters: too many to be worth showing.
    status = chunk.get("status")
    if not status or chunk.get("progress"):
        return None
    layer = chunk.get("id")
    return f"{layer}: {status}" if layer else str(status)


Render = Callable[[Mapping[str, Any]], str | None]


def _emit(chunks: Iterable[Mapping[str, Any]], render: Render, out: TextIO) -> None:
    for chunk in chunks:
        text = render(chunk)
        if text:
            out.write(text if text.endswith("\n") else text + "\n")
            out.flush()


def execute(
    build: BuildPlan, client: Any, credentials: Mapping[str, str] | None, out: TextIO
) -> None:
    """Build the image (streaming the log), then push it unless the plan says not to.

    The low-level API is used because `client.images.build` returns the log only once the
    build has finished; a cold build takes many minutes.
    """
    stream = client.api.build(
        path=str(build.context_dir),
        dockerfile=build.dockerfile,
        tag=build.image,
        buildargs=dict(build.buildargs),
        platform=build.platform,
        nocache=build.no_cache,
        rm=True,
        forcerm=True,
        decode=True,
    )
    _emit(stream, build_log_line, out)
    out.write(f"built {build.image}\n")
    if not build.push:
        return
    pushed = client.api.push(
        build.repository,
        tag=build.tag,
        stream=True,
        decode=True,
        auth_config=dict(credentials) if credentials else None,
    )
    _emit(pushed, push_log_line, out)
    out.write(f"pushed {build.image}\n")


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def make_parser() -> argparse.ArgumentParser:
    """The command line; model links fall back to the environment variables of the same name."""
    parser = argparse.ArgumentParser(
        prog="build_worker", description="Build (and push) the klein-i2i GPU worker image."
    )
    parser.add_argument("--image", required=True, help="image reference repo:tag to build")
    parser.add_argument("--no-push", action="store_true", help="build only")
    parser.add_argument(
        "--bake-models", action="store_true", help="download the models into the image"
    )
    for arg, option in MODEL_URL_ARGS.items():
        parser.add_argument(option, dest=arg, metavar="URL", help=f"with --bake-models (env {arg})")
    parser.add_argument("--comfyui-ref", default=DEFAULT_COMFYUI_REF, help="ComfyUI git tag")
    parser.add_argument(
        "--build-arg",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="another Dockerfile.worker argument (e.g. TORCH_INDEX_URL)",
    )
    parser.add_argument("--no-cache", action="store_true", help="do not reuse cached layers")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, contact no engine")
    return parser


def parse_options(argv: Sequence[str], env: Mapping[str, str]) -> Options:
    """Parse the command line into Options; argparse exits with 2 on a usage error."""
    parser = make_parser()
    ns = parser.parse_args(argv)
    problem = check_image(ns.image)
    if problem:
        parser.error(problem)
    extra = dict(ns.build_arg)
    managed = sorted(MANAGED_BUILD_ARGS & extra.keys())
    if managed:
        parser.error(f"--build-arg cannot set {', '.join(managed)}; use its own option")
    urls = {arg: getattr(ns, arg) or env.get(arg, "") for arg in MODEL_URL_ARGS}
    return Options(
        image=ns.image,
        push=not ns.no_push,
        bake_models=ns.bake_models,
        comfyui_ref=ns.comfyui_ref,
        model_urls={k: v for k, v in urls.items() if v},
        extra_build_args=extra,
        no_cache=ns.no_cache,
        dry_run=ns.dry_run,
    )


def _docker_from_env(env: Mapping[str, str]) -> Any:
    return docker.from_env(environment=dict(env))


def main(
    argv: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    client_factory: ClientFactory = _docker_from_env,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run the command line; returns the process exit code."""
    env = os.environ if env is None else env
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    options = parse_options(sys.argv[1:] if argv is None else argv, env)
    build = plan(options)
    out.writelines(line + "\n" for line in describe(build))
    if options.dry_run:
        return 0
    try:
        credentials = auth_config(env) if build.push else None
    except DeployError as exc:
        err.write(f"build_worker: {exc}\n")
        return 2
    try:
        client = client_factory(env)
    except DockerException as exc:
        err.write(f"build_worker: no Docker engine reachable: {_one_line(exc)}\n")
        return 2
    try:
        execute(build, client, credentials, out)
    except (DeployError, DockerException, RequestException) as exc:
        err.write(f"build_worker: {_one_line(exc)}\n")
        return 1
    return 0


def _one_line(problem: object) -> str:
    return " ".join(str(problem).split()) or type(problem).__name__


if __name__ == "__main__":
    sys.exit(main())
