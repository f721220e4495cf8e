#!/usr/bin/env bash
# Keeps the shared CARGO_TARGET_DIR from filling the disk: deletes the debug executables (tests
# and binaries in debug/deps, 0.3-0.6 GB each with debug info) and incremental-compilation
# sessions that were not written since STAMP_FILE, a file touched when the run began.
#
# Why that is safe: a run on a fresh clone builds every workspace crate again (cargo sees sources
# newer than its outputs), so every executable it needs is linked during the run; the older ones
# belong to earlier commits and would otherwise pile up, ~10 GB per run. Dependencies' libraries
# (.rlib, .rmeta) are kept: they are what makes the next run fast.
set -euo pipefail
stamp="${1:?usage: scripts/prune-target.sh STAMP_FILE}"
target="${CARGO_TARGET_DIR:?CARGO_TARGET_DIR must be set}"
[ -f "$stamp" ] || { echo "prune-target: no stamp file $stamp" >&2; exit 1; }
debug="$target/debug"
[ -d "$debug" ] || exit 0
before=$(du -sm "$debug" | cut -f1)
if [ -d "$debug/deps" ]; then
  find "$debug/deps" -maxdepth 1 -type f -perm -u+x ! -name '*.*' ! -newer "$stamp" -delete
fi
if [ -d "$debug/incremental" ]; then
  find "$debug/incremental" -mindepth 1 -maxdepth 1 -type d ! -newer "$stamp" -exec rm -rf {} +
fi
after=$(du -sm "$debug" | cut -f1)
echo "prune-target: $debug went from $before to $after MiB"
