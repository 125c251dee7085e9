#!/usr/bin/env bash
# Set up (scripts/setup.sh), lint, and run the whole test suite. Extra arguments go to pytest.
# The tests run on every core (pytest-xdist; TEST_WORKERS=0 runs them in this process),
# a test file per worker (so a file's shared fixtures are built once), the longest files
# first (tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
bash scripts/setup.sh
"$PY" -m ruff check .
"$PY" -m pytest -n "${TEST_WORKERS:-auto}" --dist loadfile --no-loadscope-reorder "$@"
