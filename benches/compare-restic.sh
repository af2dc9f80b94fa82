#!/usr/bin/env bash
# resilience and restic side by side, in one run, on the same reproducible data set: first
# backup, second (unchanged) backup, restore; median time and spread over rounds, peak memory,
# stored size, and the machine's load before each step.
#
#   benches/compare-restic.sh                 # 1 GiB data set, 3 rounds
#   DATASET_GIB=2 ROUNDS=5 benches/compare-restic.sh
#   SMALL_MAX_KIB=4 benches/compare-restic.sh # many more small files (see gen-dataset)
#   SMALL_FILES=200000 benches/compare-restic.sh  # only small JSON-like files, 100 B to 4 KiB
#   SMALL_FILES=1000000 SMALL_MIN_BYTES=1024 SMALL_MAX_BYTES=8192 benches/compare-restic.sh  # 1–8 KiB
#   MEMORY=128MiB benches/compare-restic.sh   # resilience's --memory (default 64MiB)
#
# Each tool restores twice a round: once to disk (resilience's default, which syncs the target's
# file system before it exits 0; restic's restore followed by `sync -f`, timed together, since
# restic does not sync) and once left in the page cache (resilience's `--no-sync`; restic alone).
#
# Restores go to a freshly made ext4 file system for each step (a loop device, when run as
# root): ext4's inode allocator otherwise slows every file created after many were deleted
# (`recently_deleted` took 40% of a 200,000-file restore's time after the previous round's
# files were removed), which bills whichever tool restores second. The loop device does
# direct I/O over an image written in full once, so that it writes as a disk does: over a
# sparse image through the page cache, every block was written back twice and allocated in
# the image as it went, and a restore of a million small files took 200-240 s for either
# tool, waiting on that (97 s for restic 0.14 on a loop device like this one).
#
# Honest on a shared VM: guest memory is touched first (its first touch is slow, and would bill
# whichever tool ran first); the page cache is written back (`sync`) before every timed step, so
# no tool pays for the other's writeback; the tools alternate which goes first, round by round;
# each round starts from empty repositories. Both back up into local repositories with their
# default compression (restic: auto; resilience: zstd 3), on a warm page cache. The results go
# to benches/results/compare-restic-<time>.md with the command that produced them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GIB="${DATASET_GIB:-1}"
ROUNDS="${ROUNDS:-3}"
SMALL="${SMALL_MAX_KIB:-64}"
SMALL_FILES="${SMALL_FILES:-}"
SMALL_MIN_BYTES="${SMALL_MIN_BYTES:-100}"
SMALL_MAX_BYTES="${SMALL_MAX_BYTES:-4096}"
MEMORY="${MEMORY:-64MiB}"
WORK="${WORK_DIR:-$(mktemp -d)}"
FS_IMG="$WORK.fs.img" MNT="$WORK.mnt" LOOP_DEV=""
cleanup() {
  fresh_fs_cleanup
  rm -rf "$WORK"
}
trap cleanup EXIT
# shellcheck source=lib/bench.sh
. "$ROOT/benches/lib/bench.sh"

need restic restic
need /usr/bin/time time

RES=$(resilience_bin)
GEN=$(bench_bin gen-dataset)

if [ -n "$SMALL_FILES" ]; then
  echo "generating $SMALL_FILES small files in $WORK/data" >&2
  "$GEN" --small "$WORK/data" "$SMALL_FILES" "$SMALL_MIN_BYTES" "$SMALL_MAX_BYTES" 42
  SHAPE="$SMALL_FILES small JSON-like files of $SMALL_MIN_BYTES to $SMALL_MAX_BYTES bytes"
else
  echo "generating ${GIB} GiB (small files up to ${SMALL} KiB) in $WORK/data" >&2
  "$GEN" "$WORK/data" "$GIB" 42 "$SMALL"
  SHAPE="${GIB} GiB of mixed files (small files up to ${SMALL} KiB)"
fi
BYTES=$(du -sb --apparent-size "$WORK/data" | cut -f1)
FILES=$(find "$WORK/data" -type f | wc -l)

touch_memory

# every restore writes into a new file system (see fresh_fs_init)
fresh_fs_init "$FS_IMG" "$MNT" "$(du -s --block-size=1 "$WORK/data" | cut -f1)"

export RESTIC_PASSWORD=bench RESILIENCE_PASSWORD=bench
bench_init "$WORK"

restic_round() {
  local r="$1"
  rm -rf "$WORK/restic"
  restic init --repo "$WORK/restic" >/dev/null
  step restic backup "$r" restic --repo "$WORK/restic" backup "$WORK/data"
  step restic second "$r" restic --repo "$WORK/restic" backup "$WORK/data"
  fresh_target
  step restic restore "$r" bash -c 'restic --repo "$1" restore latest --target "$2" && sync -f "$2"' _ "$WORK/restic" "$MNT/out"
  diff -r "$WORK/data" "$MNT/out$WORK/data" >/dev/null || { echo "restic restore differs" >&2; exit 1; }
  fresh_target
  step restic restore-cached "$r" restic --repo "$WORK/restic" restore latest --target "$MNT/out"
  du -sb "$WORK/restic" | cut -f1 > "$WORK/restic.size"
}

res_round() {
  local r="$1"
  rm -rf "$WORK/res" "$WORK/res.key"
  "$RES" init --repo "$WORK/res" --key-file "$WORK/res.key" >/dev/null
  local g=(--repo "$WORK/res" --key-file "$WORK/res.key" --memory "$MEMORY")
  step resilience backup "$r" "$RES" "${g[@]}" backup dir "$WORK/data"
  step resilience second "$r" "$RES" "${g[@]}" backup dir "$WORK/data"
  fresh_target
  step resilience restore "$r" "$RES" "${g[@]}" restore latest --target "$MNT/out"
  diff -r "$WORK/data" "$MNT/out" >/dev/null || { echo "resilience restore differs" >&2; exit 1; }
  fresh_target
  step resilience restore-cached "$r" "$RES" "${g[@]}" restore latest --target "$MNT/out" --no-sync
  diff -r "$WORK/data" "$MNT/out" >/dev/null || { echo "resilience restore --no-sync differs" >&2; exit 1; }
  du -sb "$WORK/res" | cut -f1 > "$WORK/res.size"
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r of $ROUNDS" >&2
  if [ $((r % 2)) -eq 1 ]; then restic_round "$r"; res_round "$r"; else res_round "$r"; restic_round "$r"; fi
done

OUT=$(results_file compare-restic)
python3 - "$BENCH_LIB" "$BENCH_TSV" "$BYTES" "$FILES" "$SHAPE" "$ROUNDS" "$(cat "$WORK/restic.size")" "$(cat "$WORK/res.size")" \
  "$(restic version | cut -d' ' -f2)" "$(nproc)" "$(free -g | awk '/Mem:/{print $2}')" \
  "DATASET_GIB=$GIB SMALL_MAX_KIB=$SMALL SMALL_FILES=$SMALL_FILES SMALL_MIN_BYTES=$SMALL_MIN_BYTES SMALL_MAX_BYTES=$SMALL_MAX_BYTES MEMORY=$MEMORY ROUNDS=$ROUNDS" "$FRESH" > "$OUT" <<'PY'
import statistics, sys
sys.path.insert(0, sys.argv[1])
import bench_report as br
tsv, nbytes, files, shape, rounds, rsize, zsize, rver, cores, mem, command, fresh = sys.argv[2:]
nbytes = int(nbytes)
rows = br.load(tsv)
def of(tool, step):
    return br.of(rows, tool, step)
print(f"# resilience and restic {rver}: {shape}, {files} files\n")
print(f"`{command} benches/compare-restic.sh`; "
      f"{cores} cores, {mem} GiB; {nbytes} bytes; memory touched first, `sync` before each step, "
      f"restores into a fresh {fresh} each time, "
      f"the tools alternating which goes first; medians over {rounds} rounds, [min–max].\n")
print(br.table(rows, "restic", "resilience", [("first backup", "backup", "backup"),
      ("unchanged second backup", "second", "second"),
      ("restore, on disk when it ends", "restore", "restore"),
      ("restore, left in the page cache", "restore-cached", "restore-cached")]))
print("\n*On disk when it ends*: resilience's default, which syncs the target's file system before "
      "it exits 0; restic's restore followed by `sync -f` of the target, timed together. "
      "*Left in the page cache*: `restore --no-sync`; restic's restore alone.")
print(f"\nstored bytes: restic {rsize}, resilience {zsize} ({int(zsize) / int(rsize):.2f}×). "
      f"Throughput (median): resilience backup {nbytes / 1e6 / statistics.median([x[0] for x in of('resilience', 'backup')]):.0f} MB/s, "
      f"restore {nbytes / 1e6 / statistics.median([x[0] for x in of('resilience', 'restore')]):.0f} MB/s.")
PY
cat "$OUT"
