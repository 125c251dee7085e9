"""One small tree of user errors in one module (cli/errors.py), and one way every command
prints one."""

from __future__ import annotations

import ast

import pytest

import cli.errors
from cli.errors import UserError, report_user_error
from tests.conftest import REPO


def test_every_user_error_is_defined_in_the_one_error_module():
    """No package keeps an error class of its own: a new kind goes into the tree."""
    tree_names = {name for name, value in vars(cli.errors).items()
                  if isinstance(value, type) and issubclass(value, Exception)}
    assert 10 <= len(tree_names) <= 16 and "UserError" in tree_names
    elsewhere = []
    for path in sorted(REPO.glob("*/**/*.py")):
        if path.parts[len(REPO.parts)] in {"tests", "benchmarks"} or path.name == "errors.py" \
                and path.parent.name == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(base, ast.Name) and base.id in tree_names for base in node.bases):
                elsewhere.append(f"{path.relative_to(REPO)}: {node.name}")
    assert not elsewhere, elsewhere


def test_a_user_error_is_one_line_and_status_one(capsys):
    status = report_user_error(UserError("the store is locked:\n  stop the app first"))
    assert status == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == "error: the store is locked: stop the app first\n"


def _mains() -> list:
    found = []
    for path in sorted(REPO.glob("*/**/*.py")):
        if path.parts[len(REPO.parts)] in {"tests", "benchmarks"}:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        found += [(path.relative_to(REPO), node) for node in tree.body
                  if isinstance(node, ast.FunctionDef) and node.name == "main"]
    return found


_MAINS = _mains()


@pytest.mark.parametrize("where, main", _MAINS, ids=[str(where) for where, _ in _MAINS])
def test_no_command_keeps_its_own_list_of_error_classes(where, main):
    """A main names UserError (plus OSError at most), never a tuple of the apps' errors."""
    for handler in ast.walk(main):
        if not isinstance(handler, ast.ExceptHandler) or handler.type is None:
            continue
        names = {node.id for node in ast.walk(handler.type) if isinstance(node, ast.Name)}
        names |= {node.attr for node in ast.walk(handler.type) if isinstance(node, ast.Attribute)}
        errors = {name for name in names if name.endswith("Error") or name == "Exception"}
        assert errors <= {"UserError", "OSError"}, f"{where}: except {sorted(names)}"
