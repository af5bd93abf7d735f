"""The data the code reads at run time is package data: the links that make it so point at the
folders people edit, and the build is told to ship every file in them."""

import tomllib
from pathlib import Path

import pytest

from handler.config import HandlerSettings
from handler.workflow import WorkflowError, load_workflow, packaged_workflows_dir
from orchestrator.migrate import migrations_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


def names(folder: Path, pattern: str) -> set[str]:
    return {path.name for path in folder.glob(pattern)}


@pytest.mark.parametrize(
    ("link", "target"),
    [("orchestrator/migrations", "supabase/migrations"), ("handler/workflows", "comfy_workflows")],
)
def test_the_package_data_links_point_at_the_edited_folders(link: str, target: str) -> None:
    path = REPO_ROOT / link
    assert path.is_symlink(), f"{link} must be a link to {target}"
    assert path.resolve() == (REPO_ROOT / target).resolve()


def test_migrations_are_read_from_the_package_and_are_the_supabase_files() -> None:
    expected = names(REPO_ROOT / "supabase" / "migrations", "*.sql")
    assert expected
    assert names(migrations_dir(), "*.sql") == expected


def test_graphs_are_read_from_the_package_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMFY_WORKFLOWS_DIR", raising=False)
    expected = names(REPO_ROOT / "comfy_workflows", "*.json")
    assert {"flux2_klein_9b_i2i.json", "flux2_klein_9b_i2i.bindings.json"} <= expected
    assert HandlerSettings().comfy_workflows_dir == packaged_workflows_dir()
    assert names(packaged_workflows_dir(), "*.json") == expected


def test_comfy_workflows_dir_still_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("COMFY_WORKFLOWS_DIR", str(tmp_path))
    assert HandlerSettings().comfy_workflows_dir == tmp_path


def test_the_build_ships_every_file_of_both_folders() -> None:
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    package_data = config["tool"]["setuptools"]["package-data"]
    assert "migrations/*.sql" in package_data["orchestrator"]
    assert "dashboard/static/*" in package_data["orchestrator"]
    static = REPO_ROOT / "orchestrator" / "dashboard" / "static"
    assert {"index.html", "app.js", "style.css"} <= names(static, "*")
    assert all(path.is_file() for path in static.iterdir())  # "*" ships no subfolder
    assert "workflows/*.json" in package_data["handler"]
    assert names(REPO_ROOT / "supabase" / "migrations", "*") == names(
        REPO_ROOT / "supabase" / "migrations", "*.sql"
    )
    assert names(REPO_ROOT / "comfy_workflows", "*") == names(
        REPO_ROOT / "comfy_workflows", "*.json"
    )


def test_a_missing_graph_says_where_it_looked_and_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(WorkflowError, match="set COMFY_WORKFLOWS_DIR") as raised:
        load_workflow("flux2_klein_9b_i2i", tmp_path)
    assert str(tmp_path / "flux2_klein_9b_i2i.json") in str(raised.value)
