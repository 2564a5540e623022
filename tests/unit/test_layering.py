"""Dependencies point inward: the Lambda handlers never import torch, model/ never imports AWS or DICOM code."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_handlers_do_not_import_torch():
    code = ("import sys, dispatcher.api, dispatcher.ingest, dispatcher.triage, dispatcher.sweeper; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_model_imports_only_numpy_and_torch():
    allowed = {"numpy", "torch", "model", "__future__"}
    stdlib = set(sys.stdlib_module_names)
    for path in (REPO / "model").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in stdlib, f"{path.name} imports {name}"
