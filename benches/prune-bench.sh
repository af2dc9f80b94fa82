#!/usr/bin/env bash
# Prune of a synthetic repository of 10,000 snapshots and about 1 million blobs: time and peak
# memory of each step, measured by /usr/bin/time in separate processes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SNAPSHOTS="${SNAPSHOTS:-10000}"; PER="${BLOBS_PER_SNAPSHOT:-100}"
WORK="${WORK_DIR:-$(mktemp -d)}"
trap 'rm -rf "$WORK"' EXIT
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
cargo build --release --locked -p resilience-benches --bin prune-bench --manifest-path "$ROOT/Cargo.toml" >&2
BIN="$ROOT/target/release/prune-bench"
for step in build forget prune; do
  args=("$step" "$WORK/repo"); [ "$step" = build ] && args+=("$SNAPSHOTS" "$PER")
  /usr/bin/time -f "$step: %e s, peak RSS %M KiB" "$BIN" "${args[@]}"
done
du -sb "$WORK/repo" | awk '{print "repository after prune: " $1 " bytes"}'
