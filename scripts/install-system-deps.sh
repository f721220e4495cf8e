#!/usr/bin/env bash
# Installs the system packages sepchat needs to build and test, on Debian/Ubuntu; idempotent:
# nothing is installed (and apt is not even asked) when every tool is already there.
set -euo pipefail

missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
# The tests' OpenAI client runs in a virtual environment (scripts/python-venv.sh); Debian ships venv's pip
# bootstrap (ensurepip) separately.
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
# The web UI is built with npm; its browser tests drive Debian's chromium (never a downloaded browser).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

# The desktop window (src-tauri) needs these only where apt-get exists: on macOS the system WebView is used and
# nothing extra is installed. WebKitGTK's headers (they bring GTK's, and D-Bus's for the theme portal); its
# WebDriver, Xvfb and xauth for the window's end-to-end test without a display. (No OpenSSL: nothing links it.)
if command -v apt-get >/dev/null 2>&1; then
  pkg-config --exists webkit2gtk-4.1 2>/dev/null || missing+=(libwebkit2gtk-4.1-dev)
  pkg-config --exists dbus-1 2>/dev/null || missing+=(libdbus-1-dev)
  command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
  command -v xauth >/dev/null 2>&1 || missing+=(xauth)
  command -v WebKitWebDriver >/dev/null 2>&1 || missing+=(webkit2gtk-driver)
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "missing tools (${missing[*]}) and no apt-get: install them with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
echo "installing system packages: ${missing[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
