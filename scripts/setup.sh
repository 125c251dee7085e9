#!/usr/bin/env bash
# Install the project, and what its tests need, into the active Python environment.
# `source scripts/setup.sh` only defines the functions (tests/test_setup.py calls them).
PY=${PYTHON:-$(command -v python || command -v python3)}
TORCH_REQUIREMENT=torch==2.13.0
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

# The index pip uses when told nothing else: the environment's, pip's configured one,
# or PyPI.
default_index() {
  if [ -n "${PIP_INDEX_URL:-}" ]; then
    echo "$PIP_INDEX_URL"
  else
    "$PY" -m pip config get global.index-url 2>/dev/null || echo https://pypi.org/simple
  fi
}

# pip's arguments for torch. With no NVIDIA GPU (no nvidia-smi), PyTorch's CPU wheel
# index, with the default index for torch's dependencies: on Linux a plain `torch`
# resolves to a multi-GB CUDA build. Where that index does not answer within 5 s, the
# default index alone, said on stderr (pip itself would retry an unreachable index for
# minutes, then take the default's build anyway).
torch_pip_args() {
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    if "$PY" - "$TORCH_CPU_INDEX" 2>/dev/null <<'PROBE'; then
import sys
import urllib.request

urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).close()
PROBE
      echo --index-url "$TORCH_CPU_INDEX" --extra-index-url "$(default_index)" \
        "$TORCH_REQUIREMENT"
      return
    fi
    echo "setup: no GPU, but PyTorch's CPU index ($TORCH_CPU_INDEX) cannot be reached;" \
      "installing $TORCH_REQUIREMENT from the default index" >&2
  fi
  echo "$TORCH_REQUIREMENT"
}

main() {
  set -euo pipefail
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

  # PyTorch first (see torch_pip_args). Where torch is already installed (say a CUDA
  # build on a GPU machine), it is kept.
  if ! "$PY" -c "import torch" 2>/dev/null; then
    local args
    read -ra args <<<"$(torch_pip_args)"
    "$PY" -m pip install -q "${args[@]}"
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
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
