#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint (ruff, and the import layers), and run the whole test suite. Extra arguments go to pytest.
# The tests run on every core (pytest-xdist; TEST_WORKERS=0 runs them in this process),
# a test file per worker (so a file's shared fixtures are built once), the longest files
# first (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
bash scripts/setup.sh
"$PY" -m ruff check .
"$PY" -c "import sys; from importlinter.cli import lint_imports_command as lint
sys.argv[1:] = ['--no-cache']; lint()"  # lint-imports: pyproject.toml's [tool.importlinter]
"$PY" -m pytest -n "${TEST_WORKERS:-auto}" --dist loadfile --no-loadscope-reorder "$@"
