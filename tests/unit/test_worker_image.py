"""What the GPU worker image must guarantee, checked without a Docker engine: the build context
(computed with the Docker SDK's own .dockerignore matcher, as scripts/build_worker.py sends it),
the Dockerfile's RUN steps executed under /bin/sh with stand-ins for curl, git, python3.12 and
pip (models baked where the graphs' loaders look, ComfyUI's requirements held to the torch pins),
the volume resolved the way ComfyUI reads extra_model_paths.yaml, and start.sh run against
stand-in executables. The handler's install in a clean venv is tests/integration/
test_worker_image_install.py; scripts/build_worker.py is test_worker_image_build_script.py."""

import importlib.util
import json
import os
import posixpath
import shlex
import stat
import subprocess
import sys
import tomllib
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from docker.utils import exclude_paths

from handler.config import HandlerSettings
from handler.graph_check import MODEL_FILE_INPUTS

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile.worker"
START_SH = REPO / "worker" / "start.sh"
MODEL_PATHS = REPO / "worker" / "extra_model_paths.yaml"

# The model folder each loader input lists files from (ComfyUI nodes.py: UNETLoader reads
# "diffusion_models", CLIPLoader "text_encoders", VAELoader "vae").
LOADER_FOLDERS = {
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("VAELoader", "vae_name"): "vae",
}
# Older folder names ComfyUI still accepts and files under the new ones (folder_paths.map_legacy).
LEGACY_FOLDERS = {"unet": "diffusion_models", "clip": "text_encoders"}


# --- reading Dockerfile.worker ---------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of Dockerfile.worker, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued RUN is dropped by Docker as well
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


def the_run(containing: str) -> str:
    """The one RUN command whose text contains `containing`."""
    found = [rest for word, rest in instructions() if word == "RUN" and containing in rest]
    assert len(found) == 1, f"{len(found)} RUN instructions contain {containing!r}"
    return found[0]


def build_context(root: Path = REPO) -> set[str]:
    """Paths the Docker SDK sends as the build context, honouring .dockerignore as it does."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return set(exclude_paths(str(root), patterns, dockerfile="Dockerfile.worker"))


# --- the graphs' model files -------------------------------------------------------------------


def graph_model_files() -> set[tuple[str, str]]:
    """(model folder, file name) of every loader input in every graph of comfy_workflows/."""
    needed = set()
    for path in sorted((REPO / "comfy_workflows").glob("*.json")):
        if path.name.endswith(".bindings.json"):
            continue
        for node in json.loads(path.read_text()).values():
            for name, value in node["inputs"].items():
                folder = LOADER_FOLDERS.get((node["class_type"], name))
                if folder is not None:
                    needed.add((folder, value))
    return needed


def comfy_search_folders(config_text: str) -> dict[str, list[str]]:
    """Folders ComfyUI adds per model kind from an extra_model_paths file (utils/extra_config.py):
    variables and ~ expanded in base_path only, each entry's lines joined to it."""
    folders: dict[str, list[str]] = defaultdict(list)
    for section in yaml.safe_load(config_text).values():
        entries = dict(section)
        base = os.path.expandvars(os.path.expanduser(entries.pop("base_path", "")))
        entries.pop("is_default", None)
        for kind, value in entries.items():
            for line in str(value).split("\n"):
                if line:
                    kind_now = LEGACY_FOLDERS.get(kind, kind)
                    folders[kind_now].append(os.path.normpath(os.path.join(base, line)))
    return folders


def test_every_loader_input_of_the_graphs_has_a_known_model_folder() -> None:
    assert set(LOADER_FOLDERS) >= MODEL_FILE_INPUTS
    kinds = {folder for folder, _ in graph_model_files()}
    assert kinds == {"diffusion_models", "text_encoders", "vae"}


@pytest.mark.parametrize(
    "layout",
    [{}, {"diffusion_models": "unet", "text_encoders": "clip"}],
    ids=["current-folder-names", "legacy-folder-names"],
)
def test_model_paths_file_finds_every_graph_model_on_the_network_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: dict[str, str]
) -> None:
    volume = tmp_path / "volume"
    for folder, name in graph_model_files():
        file = volume / "models" / layout.get(folder, folder) / name
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(b"weights")
    monkeypatch.setenv("NETWORK_VOLUME_PATH", str(volume))
    searched = comfy_search_folders(MODEL_PATHS.read_text())
    for folder, name in graph_model_files():
        found = [d for d in searched[folder] if os.path.isfile(os.path.join(d, name))]
        assert found, f"ComfyUI would not find {folder}/{name} on the volume"


def test_model_paths_file_is_the_one_the_image_and_start_script_use() -> None:
    assert env_values()["COMFY_EXTRA_MODEL_PATHS"] == (
        destination_of("worker/") + "/" + MODEL_PATHS.relative_to(REPO / "worker").as_posix()
    )


# --- the bake step, run as Docker would run it ---------------------------------------------------

STAND_IN_CURL = """
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out="$2"; shift 2 ;;
        --retry|--retry-delay) shift 2 ;;
        -*) shift ;;
        *) url="$1"; shift ;;
    esac
done
printf '%s' "$url" > "$out"
"""


def run_step(
    tmp_path: Path, containing: str, stand_ins: dict[str, str], **overrides: str
) -> subprocess.CompletedProcess[str]:
    """Run one RUN of the Dockerfile under /bin/sh with its ARG and ENV values, stand-in
    executables first on PATH and the image's /opt and /tmp folders moved under tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in stand_ins.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    for folder in ("record", "tmp"):
        (tmp_path / folder).mkdir(exist_ok=True)
    command = the_run(containing).replace(" /tmp/", f" {tmp_path}/tmp/")
    env = {
        **arg_defaults(),
        **env_values(),
        "COMFY_ROOT": str(tmp_path / "comfyui"),
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "RECORD": str(tmp_path / "record"),
        **overrides,
    }
    return subprocess.run(
        ["/bin/sh", "-c", command.replace("/opt/", f"{tmp_path}/opt/")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def run_bake(tmp_path: Path, **overrides: str) -> subprocess.CompletedProcess[str]:
    """Run the model-baking RUN with a curl that writes each link into its target file."""
    return run_step(tmp_path, "BAKE_MODELS", {"curl": STAND_IN_CURL}, **overrides)


def test_baked_models_land_where_the_graph_loaders_look(tmp_path: Path) -> None:
    result = run_bake(tmp_path, BAKE_MODELS="1")
    assert result.returncode == 0, result.stderr
    models = tmp_path / "comfyui" / "models"
    for folder, name in graph_model_files():
        assert (models / folder / name).is_file(), f"{folder}/{name} is not baked"
    fetched = {p.read_text() for p in models.rglob("*") if p.is_file()}
    urls = {value for key, value in arg_defaults().items() if key.startswith("MODEL_")}
    assert fetched == urls
    assert not list(models.rglob("*.part"))


def test_models_are_not_baked_by_default(tmp_path: Path) -> None:
    result = run_bake(tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "comfyui").exists()


def test_baking_without_a_model_link_fails_the_build_naming_it(tmp_path: Path) -> None:
    result = run_bake(tmp_path, BAKE_MODELS="1", MODEL_VAE_URL="")
    assert result.returncode == 1
    assert "MODEL_VAE_URL" in result.stderr
    assert not (tmp_path / "comfyui").exists()


# --- ComfyUI and torch, run with stand-ins for python3.12, pip and git ---------------------------

# A venv whose pip records its arguments (one call per line) and the constraint files it gets.
STAND_IN_PYTHON312 = """
[ "$1 $2" = "-m venv" ] || exit 9
echo "$3" > "$RECORD/venv"
mkdir -p "$3/bin"
printf '#!/bin/sh\\necho "$*" >> "$RECORD/pip"\\n' > "$3/bin/pip"
printf 'for a; do [ "$prev" = -c ] && cat "$a" >> "$RECORD/constraints"; prev="$a"; done\\n' \\
    >> "$3/bin/pip"
printf '#!/bin/sh\\necho "$*" >> "$RECORD/python"\\n' > "$3/bin/python"
chmod +x "$3/bin/pip" "$3/bin/python"
"""
# A clone that leaves a ComfyUI checkout with a requirements file at the target folder.
STAND_IN_GIT = """
echo "$*" > "$RECORD/git"
for target; do :; done
mkdir -p "$target" && touch "$target/main.py" && echo numpy > "$target/requirements.txt"
"""


def install_comfyui(tmp_path: Path) -> dict[str, str]:
    """Run the torch and ComfyUI steps; what the stand-ins recorded, by name."""
    stand_ins = {"python3.12": STAND_IN_PYTHON312, "git": STAND_IN_GIT}
    for step in ("-m venv /opt/comfyui-venv", "git clone"):
        result = run_step(tmp_path, step, stand_ins)
        assert result.returncode == 0, result.stderr
    return {p.name: p.read_text() for p in (tmp_path / "record").iterdir()}


def test_comfyui_requirements_install_under_the_same_torch_pins_as_torch(tmp_path: Path) -> None:
    record = install_comfyui(tmp_path)
    torch_call, requirements_call = [
        line.split() for line in record["pip"].splitlines() if "pip==" not in line
    ]
    installed = sorted(arg for arg in torch_call if arg.startswith("torch"))
    assert [name.partition("==")[0] for name in installed] == ["torch", "torchaudio", "torchvision"]
    assert sorted(record["constraints"].split()) == installed
    given = requirements_call[requirements_call.index("-r") + 1]
    assert given == str(tmp_path / "comfyui" / "requirements.txt")


def test_comfyui_runs_on_the_python_torch_was_installed_for(tmp_path: Path) -> None:
    record = install_comfyui(tmp_path)
    comfy_python = env_values()["COMFY_PYTHON"].replace("/opt/", f"{tmp_path}/opt/")
    assert Path(comfy_python).parent.parent == Path(record["venv"].strip())
    assert "import torch" in record["python"]  # the build checks torch loads in that venv


def test_comfyui_checkout_lands_where_start_sh_looks_at_the_pinned_ref(tmp_path: Path) -> None:
    record = install_comfyui(tmp_path)
    assert (tmp_path / "comfyui" / "main.py").is_file()
    clone = record["git"].split()
    assert clone[clone.index("--branch") + 1] == arg_defaults()["COMFYUI_REF"]


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


SENT = ["Dockerfile.worker", "pyproject.toml", "README.md", "handler/worker.py",
        "comfy_workflows/graph.json", "worker/start.sh"]  # fmt: skip
LEFT_OUT = [
    "tests/unit/test_worker_image.py", ".venv/bin/python", ".git/HEAD", ".klein/pg/PG_VERSION",
    "bench/loop_lag.py", "orchestrator/flow.py", "docs/runpod.md", "samples/cat.png",
    "handler/__pycache__/worker.cpython-312.pyc", "handler/stray.pyc", ".hypothesis/examples/x",
    ".pytest_cache/v/cache", "handler/.mypy_cache/3.11/x.json", "handler/.ruff_cache/x",
    ".mypy_cache/x", "comfy_workflows/flux.safetensors", "models/vae/flux2-vae.safetensors",
    "handler/.DS_Store", "klein_i2i.egg-info/PKG-INFO",
]  # fmt: skip


def test_build_context_sends_the_image_inputs_and_leaves_out_tests_caches_and_state(
    tmp_path: Path,
) -> None:
    for relative in SENT + LEFT_OUT:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x")
    context = build_context(tmp_path)
    assert set(SENT) <= context
    assert sorted(set(LEFT_OUT) & context) == []


def test_the_project_metadata_pip_reads_is_copied_before_the_handler_install() -> None:
    install = next(i for i, (w, rest) in enumerate(instructions()) if "[handler]" in rest)
    copied_before = {
        source for word, rest in instructions()[:install] if word == "COPY"
        for source in shlex.split(rest)[:-1]
    }  # fmt: skip
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", readme, "handler/"} <= copied_before


def test_environment_points_at_the_copied_files_and_the_handler_defaults() -> None:
    env = env_values()
    assert env["COMFY_WORKFLOWS_DIR"] == destination_of("comfy_workflows/")
    assert (REPO / "comfy_workflows" / f"{env['COMFY_WORKFLOW']}.json").is_file()
    defaults = {name: field.default for name, field in HandlerSettings.model_fields.items()}
    assert env["COMFY_API_URL"] == defaults["comfy_api_url"]
    assert Path(env["NETWORK_VOLUME_PATH"]) == defaults["network_volume_path"]


def test_build_script_defaults_to_the_comfyui_ref_the_dockerfile_defaults_to() -> None:
    spec = importlib.util.spec_from_file_location("build_worker", REPO / "scripts/build_worker.py")
    assert spec is not None
    assert spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    assert arg_defaults()["COMFYUI_REF"] == module.DEFAULT_COMFYUI_REF


def test_entrypoint_is_the_copied_start_script_and_is_executable() -> None:
    entry = [json.loads(rest) for word, rest in instructions() if word == "ENTRYPOINT"]
    assert not [word for word, _ in instructions() if word == "CMD"]
    assert entry == [[destination_of("worker/") + "/" + START_SH.name]]
    assert START_SH.stat().st_mode & stat.S_IXUSR
    assert START_SH.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(START_SH)], check=True)


# --- start.sh ----------------------------------------------------------------------------------


def _executable(path: Path, body: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def stand_ins(tmp_path: Path) -> dict[str, Any]:
    """The image's environment with a ComfyUI folder and two recording executables."""
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
    # The handler stand-in records what it sees only once ComfyUI's stand-in has started.
    _executable(
        bin_dir / "python",
        'for _ in $(seq 1 400); do [ -f "$RECORD/comfy.args" ] && break; sleep 0.05; done\n'
        '[ -f "$RECORD/comfy.args" ] || exit 3\n'
        'env > "$RECORD/handler.env"\n'
        'printf "%s\\n" "$@" > "$RECORD/handler.args"\n',
    )
    env = {
        **env_values(),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "RECORD": str(record),
        "COMFY_ROOT": str(comfy_root),
        "COMFY_PYTHON": str(tmp_path / "comfy-python"),
        "COMFY_EXTRA_MODEL_PATHS": str(MODEL_PATHS),
        "NETWORK_VOLUME_PATH": str(tmp_path / "volume"),
    }
    return {"env": env, "record": record, "comfy_root": comfy_root}


def run_start(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run worker/start.sh as the container's entry point, with this environment."""
    return subprocess.run(
        ["bash", str(START_SH), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def recorded(record: Path, name: str) -> list[str]:
    """Lines a stand-in wrote."""
    return record.joinpath(name).read_text().splitlines()


def recorded_env(record: Path, name: str) -> dict[str, str]:
    """The environment a stand-in saw."""
    return dict(line.split("=", 1) for line in recorded(record, name) if "=" in line)


def test_start_launches_comfyui_then_becomes_the_handler(stand_ins: dict[str, Any]) -> None:
    env = {**stand_ins["env"], "COMFY_EXTRA_ARGS": "--highvram --fast"}
    result = run_start(env, "--rp_serve_api", "--rp_api_host", "0.0.0.0")
    assert result.returncode == 0, result.stderr
    record: Path = stand_ins["record"]
    comfy_args = recorded(record, "comfy.args")
    assert comfy_args[:2] == ["-u", "main.py"]
    for flag in ("--disable-auto-launch", "--highvram", "--fast"):
        assert flag in comfy_args
    assert comfy_args[comfy_args.index("--extra-model-paths-config") + 1] == str(MODEL_PATHS)
    assert recorded(record, "comfy.cwd") == [str(stand_ins["comfy_root"])]
    assert recorded(record, "handler.args") == [
        "-u", "-m", "handler", "--rp_serve_api", "--rp_api_host", "0.0.0.0",
    ]  # fmt: skip
    lines = result.stdout.splitlines()
    assert lines
    assert all(line.startswith("worker: ") for line in lines)


def test_handler_is_pointed_at_the_address_comfyui_listens_on(stand_ins: dict[str, Any]) -> None:
    result = run_start(stand_ins["env"])
    assert result.returncode == 0, result.stderr
    record: Path = stand_ins["record"]
    comfy_args = recorded(record, "comfy.args")
    handler_env = recorded_env(record, "handler.env")
    url = urlsplit(handler_env["COMFY_API_URL"])
    assert url.hostname == comfy_args[comfy_args.index("--listen") + 1]
    assert url.port == int(comfy_args[comfy_args.index("--port") + 1])


def test_start_gives_comfyui_the_volume_path_the_handler_defaults_to(
    stand_ins: dict[str, Any],
) -> None:
    env = {k: v for k, v in stand_ins["env"].items() if k != "NETWORK_VOLUME_PATH"}
    result = run_start(env)
    assert result.returncode == 0, result.stderr
    comfy_env = recorded_env(stand_ins["record"], "comfy.env")
    default = HandlerSettings.model_fields["network_volume_path"].default
    assert Path(comfy_env["NETWORK_VOLUME_PATH"]) == default


def test_start_refuses_without_comfyui_and_starts_nothing(stand_ins: dict[str, Any]) -> None:
    (stand_ins["comfy_root"] / "main.py").unlink()
    result = run_start(stand_ins["env"])
    assert result.returncode == 1
    assert result.stderr.startswith("worker: no ComfyUI at COMFY_ROOT=")
    assert list(stand_ins["record"].iterdir()) == []
