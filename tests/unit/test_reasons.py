"""Every reason code is a member of ``Reason``: clients match on them, so there is one list.

The check reads the code: the first argument of every error the project raises
(``BadInput("...")``, ``ModelError("...")``, ...) that is a string literal must be one
of ``Reason``'s values, and the kernel and the shells must not write literals at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

from ctfleet.contracts import Reason

REPO = Path(__file__).resolve().parents[2]
ERRORS = {"CtfleetError", "BadInput", "Transient", "Interrupted", "Conflict", "Fault", "NotFound", "NothingAccepted",
          "VolumeError", "ModelError"}
CODES = {v for k, v in vars(Reason).items() if not k.startswith("_")}


def raised_reasons(package: str) -> list[tuple[str, int, ast.expr]]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
                if name in ERRORS:
                    out.append((str(path.relative_to(REPO)), node.lineno, node.args[0]))
    return out


def test_reason_values_are_unique_snake_case_codes():
    members = {k: v for k, v in vars(Reason).items() if not k.startswith("_")}
    assert len(set(members.values())) == len(members), "two members share a code"
    assert all(v == k.lower() for k, v in members.items())


def test_the_kernel_and_the_shells_name_reasons_through_the_namespace():
    literals = [(f, line, a.value) for package in ("ctfleet", "worker", "dispatcher")
                for f, line, a in raised_reasons(package) if isinstance(a, ast.Constant)]
    assert not literals, literals


def test_every_reason_the_model_raises_is_listed():
    found = [(f, line, a.value) for f, line, a in raised_reasons("model") if isinstance(a, ast.Constant)]
    assert found, "the scan sees the model's errors"
    unknown = [x for x in found if x[2] not in CODES]
    assert not unknown, unknown
