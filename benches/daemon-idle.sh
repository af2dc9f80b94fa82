#!/usr/bin/env bash
# The scheduler's own overhead: CPU and memory of `resilience daemon` idle with 100 jobs
# (100 directory sources scheduled daily, outside the measurement), with its alert watcher
# assessing health every second and /metrics scraped every 5 s, as Prometheus would.
#
#   benches/daemon-idle.sh            # SECONDS_IDLE=60 by default
#
# Everything under a temporary directory, removed at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IDLE="${SECONDS_IDLE:-60}"
JOBS="${JOBS:-100}"
WORK="$(mktemp -d)"
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# RESILIENCE_BIN=path skips the release build (e.g. to measure a debug build as an upper bound).
if [ -n "${RESILIENCE_BIN:-}" ]; then
  RES="$RESILIENCE_BIN"
else
  cargo build --release --locked -p resilience-cli --manifest-path "$ROOT/Cargo.toml" >&2
  TARGET="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
  RES="$TARGET/release/resilience"
fi

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$WORK/key"
"$RES" init --repo "$WORK/repo" --key-file "$WORK/key" >/dev/null
mkdir -p "$WORK/src"; echo hello > "$WORK/src/a"
P=$(port); H=$(port)
# A sink for alerts that are never sent (every source is healthy before its RPO passes).
python3 -m http.server "$H" --bind 127.0.0.1 >/dev/null 2>&1 & HOOK=$!
{
  printf '[repository]\nurl = "%s"\nkey_file = "%s"\n[server]\nlisten = "127.0.0.1:%s"\nwebhook = "http://127.0.0.1:%s/"\n' \
    "$WORK/repo" "$WORK/key" "$P" "$H"
  for i in $(seq 1 "$JOBS"); do
    printf '[[source]]\nname = "s%03d"\nkind = "dir"\npath = "%s"\nschedule = "0 0 3 * * *"\ntimezone = "Europe/Berlin"\nrpo = "2d"\n' \
      "$i" "$WORK/src"
  done
} > "$WORK/daemon.toml"

"$RES" daemon --config "$WORK/daemon.toml" 2>"$WORK/daemon.log" & PID=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$P/health" >/dev/null 2>&1 && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
HZ=$(getconf CLK_TCK)
start=$(ticks)
for _ in $(seq 1 $((IDLE / 5))); do sleep 5; curl -sf "http://127.0.0.1:$P/metrics" >/dev/null; done
end=$(ticks)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
hwm=$(awk '/VmHWM/ {print $2}' "/proc/$PID/status")
kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
kill "$HOOK" 2>/dev/null || true
cpu=$(python3 -c "print(f'{($end - $start) / $HZ:.2f}')")
pct=$(python3 -c "print(f'{100 * ($end - $start) / $HZ / $IDLE:.3f}')")
echo "daemon idle with $JOBS jobs for ${IDLE} s (health every 1 s, /metrics every 5 s):"
echo "  CPU ${cpu} s (${pct} % of one core); RSS ${rss} KiB now, ${hwm} KiB peak"
