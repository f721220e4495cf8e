#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench` and `llama-simple` for the comparisons in docs/BENCHMARKS.md,
# from the llama.cpp sources inside the llama-cpp-python sdist on PyPI (no other source is reachable
# here). Manual step, not part of `make test`: about 15 minutes on 2 cores. Idempotent.
#
#     scripts/build-llama-bench.sh            # prints the folder holding llama-bench and llama-simple
#
# Needs cmake and a C++ compiler (`apt-get install cmake build-essential`).
set -euo pipefail

VERSION=0.3.36
ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/sepchat/llama.cpp-$VERSION"
BIN="$ROOT/build/bin"

if [[ -x "$BIN/llama-bench" && -x "$BIN/llama-simple" ]]; then
    echo "$BIN"
    exit 0
fi
command -v cmake >/dev/null || { echo "error: cmake is missing: apt-get install cmake" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# --no-binary for this package only: its build dependencies may come as wheels.
python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$work" >&2
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
rm -rf "$ROOT"
mkdir -p "$(dirname "$ROOT")"
mv "$work/llama_cpp_python-$VERSION/vendor/llama.cpp" "$ROOT"
# GGML_NATIVE: llama.cpp compiled for this CPU, as `target-cpu=native` compiles sepchat.
cmake -S "$ROOT" -B "$ROOT/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release >&2
cmake --build "$ROOT/build" --target llama-bench llama-simple -j "$(nproc)" >&2
echo "$BIN"
