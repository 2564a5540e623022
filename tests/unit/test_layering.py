"""Dependencies point inward (shared/DESIGN.md, Layout), checked on every module's imports.

- only the outer ring (``ctfleet.cli``, ``ctfleet.local``, ``ctfleet.dev``) imports the shells
  (``worker``, ``dispatcher``), and nothing else in the kernel imports the outer ring;
- ``ctfleet.contracts`` and ``ctfleet.intake`` never import boto3 (nor botocore);
- no handler imports another handler; the worker and the handlers never import each other;
- no module imports another module's ``_private`` names;
- ``model`` imports only numpy, torch, the standard library and itself;
- ``infra`` imports only ``ctfleet.settings`` of the project;
- the Lambda handlers never import torch (checked in a fresh interpreter).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("ctfleet", "model", "worker", "dispatcher", "infra")
OUTER_RING = ("ctfleet.cli", "ctfleet.local", "ctfleet.dev", "ctfleet.__main__")
SHELLS = ("worker", "dispatcher")
HANDLERS = ("dispatcher.api", "dispatcher.ingest", "dispatcher.triage", "dispatcher.sweeper", "dispatcher.audit")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted and absolute
    names: tuple[str, ...]  # names taken from it (``from target import a, b``); () for ``import target``
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path) -> list[Import]:
    module = module_name(path)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(module, a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, path.name == "__init__.py", node)
            found.append(Import(module, target, tuple(a.name for a in node.names), node.lineno))
    return found


def all_imports() -> list[Import]:
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            out += imports_of(path)
    return out


IMPORTS = all_imports()


def within(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_submodule(target: str, name: str) -> bool:
    return (REPO / Path(*target.split("."), name)).is_dir() or (REPO / Path(*target.split("."), f"{name}.py")).exists()


def test_the_checker_sees_every_kind_of_import():
    """The rules below are only as good as the import list: make sure it is complete."""
    assert any(i.module == "worker.loop" and i.target == "worker.heartbeat" for i in IMPORTS), "relative imports"
    assert any(i.target == "boto3" for i in IMPORTS), "plain imports"
    assert any(i.module.startswith("ctfleet.local") and within(i.target, "dispatcher") for i in IMPORTS), \
        "imports inside functions"


def test_only_the_outer_ring_imports_the_shells():
    bad = [i for i in IMPORTS if within(i.target, SHELLS) and within(i.module, "ctfleet")
           and not within(i.module, OUTER_RING)]
    assert not bad, bad


def test_the_kernel_and_the_shells_never_import_the_outer_ring():
    bad = [i for i in IMPORTS if within(i.target, OUTER_RING) and not within(i.module, OUTER_RING)]
    assert not bad, bad


def test_contracts_and_intake_never_import_boto3():
    bad = [i for i in IMPORTS if within(i.module, ("ctfleet.contracts", "ctfleet.intake"))
           and within(i.target, ("boto3", "botocore"))]
    assert not bad, bad


def test_no_handler_imports_another_and_worker_and_dispatcher_stay_apart():
    bad = [i for i in IMPORTS if within(i.module, HANDLERS) and within(i.target, HANDLERS)
           and not within(i.target, i.module)]
    bad += [i for i in IMPORTS if within(i.module, "worker") and within(i.target, "dispatcher")]
    bad += [i for i in IMPORTS if within(i.module, "dispatcher") and within(i.target, "worker")]
    assert not bad, bad


def test_no_module_imports_another_modules_private_names():
    bad = [i for i in IMPORTS if within(i.target, PACKAGES) and i.target != i.module
           for n in i.names if n.startswith("_") and not n.startswith("__") and not _is_submodule(i.target, n)]
    assert not bad, bad


def test_model_imports_only_numpy_torch_and_the_standard_library():
    allowed = {"numpy", "torch", "model", "__future__"} | set(sys.stdlib_module_names)
    bad = [i for i in IMPORTS if within(i.module, "model") and i.target.split(".")[0] not in allowed]
    assert not bad, bad


def test_infra_reads_only_the_settings_of_the_project():
    bad = [i for i in IMPORTS if within(i.module, "infra") and within(i.target, ("ctfleet", "model", "worker",
                                                                                 "dispatcher"))
           and i.target != "ctfleet.settings"]
    assert not bad, bad


@pytest.mark.parametrize("handler", HANDLERS)
def test_handlers_do_not_import_torch(handler):
    code = f"import sys, {handler}; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
