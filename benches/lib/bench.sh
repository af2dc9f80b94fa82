# shellcheck shell=bash
# What the benches/compare-*.sh scripts share. Source it once ROOT (the workspace) is set:
#
#   . "$ROOT/benches/lib/bench.sh"
#
#   need CMD PACKAGE          apt-get install PACKAGE unless CMD is there
#   RES=$(resilience_bin)     $RESILIENCE_BIN, else a release build of the CLI
#   GEN=$(bench_bin NAME)     $BENCH_BIN_DIR/NAME, else a release build of that resilience-benches bin
#   touch_memory              touch guest memory once, before any timed step
#   bench_init DIR            times go to DIR/times.tsv, every step's output to DIR/log/
#   STEP_AS=(setpriv ...)     a prefix for the steps' commands (run the tool as another user,
#                             still exec'd under /usr/bin/time so that it sees the tool's RSS)
#   step TOOL STEP ROUND CMD...
#                             `sync`, the 1-minute load, CMD under /usr/bin/time; appends
#                             tool, step, round, secs, rss_kib, load to the TSV; the command's
#                             stdout stays in $STEP_OUT
#   record TOOL STEP ROUND SECS RSS_KIB LOAD
#                             appends a figure measured otherwise (e.g. an RTO a tool reports)
#   report_table [--rate COUNT UNIT] PEER OURS LABEL=STEP|LABEL=PEER_STEP:OURS_STEP...
#                             a markdown table: medians [min–max], PEER / OURS, peak RSS, load
#   report_ratio [--rate COUNT UNIT] PEER PEER_STEP OURS OURS_STEP
#                             the ratio the table prints for that pair (how many times faster)
#   report_footer             the command that produced the results, the machine, the method
#   results_file NAME         benches/results/NAME-<UTC yyyymmdd-HHMM>.md
#
# Honest on a shared VM: memory is touched first (its first touch is slow and would bill
# whichever tool ran first), the page cache is written back before every timed step (no tool
# pays for another's writeback), the scripts alternate which tool goes first round by round and
# report medians with the spread, so that one noisy step cannot make a result.

BENCH_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STEP_AS=()
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ next to bench_report.py
STEP_OUT=""

need() {
  command -v "$1" >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
}

# The CLI: $RESILIENCE_BIN (made absolute), else a release build of resilience-cli.
resilience_bin() {
  local bin
  if [ -n "${RESILIENCE_BIN:-}" ]; then
    bin="$(realpath "$RESILIENCE_BIN")"
  else
    cargo build --release --locked -p resilience-cli --manifest-path "$ROOT/Cargo.toml" >&2 || return 1
    bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/resilience"
  fi
  [ -x "$bin" ] || { echo "no resilience binary at $bin" >&2; return 1; }
  echo "$bin"
}

# bench_bin NAME: a binary of resilience-benches (gen-dataset, redis-dump-loop):
# $BENCH_BIN_DIR/NAME, else a release build of it.
bench_bin() {
  local bin
  if [ -n "${BENCH_BIN_DIR:-}" ]; then
    bin="$(realpath "$BENCH_BIN_DIR")/$1"
  else
    cargo build --release --locked -p resilience-benches --bin "$1" --manifest-path "$ROOT/Cargo.toml" >&2 || return 1
    bin="${CARGO_TARGET_DIR:-$ROOT/target}/release/$1"
  fi
  [ -x "$bin" ] || { echo "no $1 binary at $bin" >&2; return 1; }
  echo "$bin"
}

# Touch guest memory once (half of it, at most 8 GiB) so that no timed step pays its first touch.
touch_memory() {
  python3 - <<'PY'
import os
total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
n = min(total // 2, 8 << 30)
b = bytearray(n)
for i in range(0, n, 4096):
    b[i] = 1
PY
}

bench_init() {
  BENCH_DIR="$1"
  BENCH_TSV="$BENCH_DIR/times.tsv"
  mkdir -p "$BENCH_DIR/log"
  : > "$BENCH_TSV"
}

# timed TOOL STEP ROUND CMD...: one timed step, after writing the page cache back; sets
# STEP_SECS, STEP_RSS (KiB), STEP_LOAD (the 1-minute load before it) and STEP_OUT (its stdout).
timed() {
  local tool="$1" name="$2" round="$3"; shift 3
  local base
  base="$BENCH_DIR/log/$(printf '%s.%s.%s' "$tool" "$name" "$round" | tr -c 'A-Za-z0-9._-' _)"
  STEP_OUT="$base.out"
  sync
  STEP_LOAD=$(cut -d' ' -f1 /proc/loadavg)
  /usr/bin/time -f "%e %M" -o "$base.time" "${STEP_AS[@]}" "$@" >"$STEP_OUT" 2>"$base.err" || {
    tail -n 30 "$base.err" >&2; echo "$tool $name (round $round) failed; logs in $base.*" >&2; exit 1; }
  read -r STEP_SECS STEP_RSS < "$base.time"
}

step() {
  timed "$@"
  record "$1" "$2" "$3" "$STEP_SECS" "$STEP_RSS" "$STEP_LOAD"
  echo "  round $3 $1 $2: ${STEP_SECS}s, peak RSS $((STEP_RSS / 1024)) MiB, load $STEP_LOAD" >&2
}

record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$BENCH_TSV"; }

report_table() { python3 "$BENCH_LIB/bench_report.py" table "$BENCH_TSV" "$@"; }
report_ratio() { python3 "$BENCH_LIB/bench_report.py" ratio "$BENCH_TSV" "$@"; }

# bench_command VAR|VAR=VALUE...: the command line that produced the results, with those
# variables (VAR: its value in the script).
bench_command() {
  local v s=""
  for v; do
    case "$v" in *=*) s+="$v " ;; *) s+="$v=${!v-} " ;; esac
  done
  printf '%sbenches/%s' "$s" "$(basename "$0")"
}

# report_footer VAR|VAR=VALUE...: the command (with those variables), the machine and the method.
report_footer() {
  python3 "$BENCH_LIB/bench_report.py" footer "$BENCH_TSV" "$(bench_command "$@")" "$(nproc)" \
    "$(free -g | awk '/Mem:/{print $2}')"
}

results_file() {
  mkdir -p "$ROOT/benches/results"
  echo "$ROOT/benches/results/$1-$(date -u +%Y%m%d-%H%M).md"
}

# fresh_fs_init IMAGE MOUNT BYTES: prepares fresh_target's file systems. As root, with mkfs.ext4
# and losetup: an image of twice BYTES and a GiB, written in full (allocated, as a disk is),
# behind a loop device with direct I/O, so that every restore writes into a new file system on
# the same disk, never into blocks another step freed (this root file system discards on delete,
# and a restore into it after another one's `rm -rf` ran up to four times slower). Otherwise an
# empty directory each time. Sets FRESH (what fresh_target makes), MNT and LOOP_DEV;
# fresh_fs_cleanup undoes it.
fresh_fs_init() {
  FS_IMG="$1" MNT="$2" LOOP_DEV="" FRESH="directory"
  mkdir -p "$MNT"
  if [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null && command -v losetup >/dev/null; then
    FRESH="ext4 (a loop device with direct I/O over an allocated image)"
    dd if=/dev/zero of="$FS_IMG" bs=1M count=$(( ($3 * 2 + (1 << 30)) >> 20 )) oflag=direct status=none
    LOOP_DEV=$(losetup --direct-io=on -f --show "$FS_IMG")
  fi
}

# fresh_target [OWNER]: an empty file system (or directory) at $MNT, owned by OWNER if given;
# an inode per 4 KiB (many small files), never discarded by mkfs.
fresh_target() {
  if [ -n "$LOOP_DEV" ]; then
    umount "$MNT" 2>/dev/null || true
    mkfs.ext4 -q -F -E nodiscard -i 4096 "$LOOP_DEV" && mount "$LOOP_DEV" "$MNT"
  else
    rm -rf "$MNT"; mkdir -p "$MNT"
  fi
  if [ -n "${1:-}" ]; then chown "$1" "$MNT"; fi
}

fresh_fs_cleanup() {
  umount "$MNT" 2>/dev/null || true
  if [ -n "${LOOP_DEV:-}" ]; then losetup -d "$LOOP_DEV" 2>/dev/null || true; fi
  rm -rf "$FS_IMG" "$MNT"
}
