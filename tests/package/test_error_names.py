"""Every ``amad.<module>[.<name>]`` that a message of the library names exists.

Error messages (and the other strings the code prints or runs: usage lines, ``python -m`` commands) tell
the user which function to call or which module to run; a renamed or unexported name would send them
nowhere. Docstrings are left out (they are read with the code).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
NAME = re.compile(r"\bamad(?:\.[A-Za-z_]\w*)+")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def _names_in_messages() -> list[tuple[str, str]]:
    found = []
    for path in sorted((ROOT / "amad").rglob("*.py")):
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
                for name in NAME.findall(node.value):
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", name.rstrip(".")))
    return found


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


MESSAGES = _names_in_messages()


def test_messages_name_something():
    assert len(MESSAGES) >= 5  # the scan reads the strings (e.g. `amad.compare.teacher.resolve_teacher_reference`)


@pytest.mark.parametrize(("where", "name"), MESSAGES, ids=[f"{w}:{n}" for w, n in MESSAGES])
def test_every_amad_name_in_a_message_exists(where, name):
    assert _resolves(name), f"{where} names {name}, which does not exist"


def test_a_wrong_name_is_caught():
    assert not _resolves("amad.compare.resolve_teacher_reference")  # not exported by amad.compare
    assert _resolves("amad.compare.teacher.resolve_teacher_reference")
