#!/usr/bin/env bash
# Installs tauri-driver (the WebDriver bridge the desktop window's end-to-end test talks to); idempotent: nothing
# is built when it is already on PATH or in ~/.cargo/bin. The version is pinned to the 2.x line that matches the
# Tauri 2 app (the 3.x line is an alpha for Tauri 3), and --locked builds it with its own lock file.
set -euo pipefail

TAURI_DRIVER_VERSION="2.1.0"

if command -v tauri-driver >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/tauri-driver" ]; then
  exit 0
fi
echo "installing tauri-driver ${TAURI_DRIVER_VERSION} (cargo install, a few minutes, once)" >&2
# Without CARGO_TARGET_DIR (the Makefile exports the workspace's), cargo install builds in a temporary directory
# and deletes it afterwards, instead of leaving a second copy of tokio & co. in the workspace's target directory.
env -u CARGO_TARGET_DIR cargo install tauri-driver --version "${TAURI_DRIVER_VERSION}" --locked
