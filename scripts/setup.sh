#!/usr/bin/env bash
# Install the project, and what its tests need, into the active Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first, and its CPU build: a plain `torch` requirement resolves to a
# multi-GB CUDA build. Where torch is already installed (say a CUDA build on a GPU
# machine), it is kept.
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q -e ".[test]"

# The browser tests drive Debian's chromium through Playwright (no `playwright install`:
# it downloads a browser build, which this project never does).
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium is missing; install Debian's chromium package for the browser tests" >&2
  fi
fi
