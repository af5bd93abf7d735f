"""The import-linter contracts in pyproject.toml name every module of the worker but its contract,
so a module added to handler/ is forbidden to the orchestrator until someone decides otherwise."""

import pkgutil
import tomllib
from pathlib import Path

import handler

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def worker_modules_but_the_contract() -> set[str]:
    """handler's top-level modules and packages, `__main__` included, except `contract`."""
    names = {info.name for info in pkgutil.iter_modules(handler.__path__)} | {"__main__"}
    return {f"handler.{name}" for name in names - {"contract"}}


def test_the_forbidden_lists_name_every_module_of_the_worker_but_its_contract():
    contracts = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]
    lists = [c["forbidden_modules"] for c in contracts if c["source_modules"] != ["handler"]]
    worker_lists = [set(names) for names in lists if any(n.startswith("handler.") for n in names)]
    assert len(worker_lists) == 2
    for names in worker_lists:
        assert names == worker_modules_but_the_contract()
