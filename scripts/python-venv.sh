#!/usr/bin/env bash
# The Python the tests run: a virtual environment outside the clone (so a fresh clone reuses it) holding, at pinned
# versions, the `openai` package (the real OpenAI client against `sepchat serve --api`) and selenium + Pillow (the
# desktop window's end-to-end test: a keep-alive WebDriver client, and the screenshot check). Idempotent: nothing is
# created or installed when the environment already has those versions. Prints the environment's interpreter, the
# only line on stdout.
set -euo pipefail

PACKAGES=(openai==3.51.0 selenium==4.51.0 pillow==13.0.0)
venv="${SEPCHAT_VENV:-$HOME/.cache/sepchat/venv}"
python="$venv/bin/python"

installed() {
  "$python" - "${PACKAGES[@]}" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for pinned in sys.argv[1:]:
    name, wanted = pinned.split("==")
    try:
        if version(name) != wanted:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
}

if ! installed; then
  if [ ! -x "$python" ]; then
    echo "creating the Python environment $venv" >&2
    # Debian splits venv support out (python3-venv); scripts/install-system-deps.sh installs it.
    python3 -m venv "$venv" >&2
  fi
  echo "installing ${PACKAGES[*]} into $venv" >&2
  "$python" -m pip install --quiet --disable-pip-version-check "${PACKAGES[@]}" >&2
  installed || { echo "${PACKAGES[*]} are still not all installed in $venv" >&2; exit 1; }
fi
echo "$python"
