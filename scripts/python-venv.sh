#!/usr/bin/env bash
# The Python the tests drive the OpenAI-compatible API with: a virtual environment outside the clone (so a fresh
# clone reuses it) holding the `openai` package at a pinned version. Idempotent: nothing is created or installed
# when the environment already has that version. Prints the environment's interpreter, the only line on stdout.
set -euo pipefail

OPENAI_VERSION=3.51.0
venv="${SEPCHAT_VENV:-$HOME/.cache/sepchat/venv}"
python="$venv/bin/python"

installed() {
  "$python" -c "import sys, openai; sys.exit(openai.__version__ != '$OPENAI_VERSION')" >/dev/null 2>&1
}

if ! installed; then
  if [ ! -x "$python" ]; then
    echo "creating the Python environment $venv" >&2
    # Debian splits venv support out (python3-venv); scripts/install-system-deps.sh installs it.
    python3 -m venv "$venv" >&2
  fi
  echo "installing openai==$OPENAI_VERSION into $venv" >&2
  "$python" -m pip install --quiet --disable-pip-version-check "openai==$OPENAI_VERSION" >&2
  installed || { echo "openai==$OPENAI_VERSION is still not importable from $python" >&2; exit 1; }
fi
echo "$python"
