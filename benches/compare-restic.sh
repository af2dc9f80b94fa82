#!/usr/bin/env bash
# resilience and restic side by side, in one run, on the same reproducible data set:
# first backup, second (unchanged) backup, restore; throughput, stored size, peak memory.
#
#   benches/compare-restic.sh            # 1 GiB data set (DATASET_GIB=2 for 2 GiB)
#
# Both tools back up into local repositories under the same temporary directory, with their
# default compression (restic: auto; resilience: zstd 3), on a warm page cache.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GIB="${DATASET_GIB:-1}"
WORK="${WORK_DIR:-$(mktemp -d)}"
trap 'rm -rf "$WORK"' EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need restic restic
need /usr/bin/time time

cargo build --release --locked -p resilience-cli --manifest-path "$ROOT/Cargo.toml" >&2
cargo build --release --locked -p resilience-benches --bin gen-dataset --manifest-path "$ROOT/Cargo.toml" >&2
RES="$ROOT/target/release/resilience"
GEN="$ROOT/target/release/gen-dataset"

echo "generating ${GIB} GiB in $WORK/data" >&2
"$GEN" "$WORK/data" "$GIB" 42
BYTES=$(du -sb --apparent-size "$WORK/data" | cut -f1)

# run LABEL CMD...: wall seconds and peak RSS (KiB) into $LABEL.secs / $LABEL.rss
run() {
  local label="$1"; shift
  /usr/bin/time -f "%e %M" -o "$WORK/$label.time" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" || {
    cat "$WORK/$label.err" >&2; echo "$label failed" >&2; exit 1; }
  read -r secs rss < "$WORK/$label.time"
  echo "$secs" > "$WORK/$label.secs"; echo "$rss" > "$WORK/$label.rss"
}

export RESTIC_PASSWORD=bench RESILIENCE_PASSWORD=bench
restic init --repo "$WORK/restic" >/dev/null
run restic-1 restic --repo "$WORK/restic" backup "$WORK/data"
run restic-2 restic --repo "$WORK/restic" backup "$WORK/data"
run restic-r restic --repo "$WORK/restic" restore latest --target "$WORK/restic-out"

"$RES" init --repo "$WORK/res" --key-file "$WORK/res.key" >/dev/null
run res-1 "$RES" backup --repo "$WORK/res" --key-file "$WORK/res.key" dir "$WORK/data"
run res-2 "$RES" backup --repo "$WORK/res" --key-file "$WORK/res.key" dir "$WORK/data"
run res-r "$RES" restore --repo "$WORK/res" --key-file "$WORK/res.key" latest --target "$WORK/res-out"

diff -r "$WORK/data" "$WORK/res-out" >/dev/null || { echo "resilience restore differs" >&2; exit 1; }
diff -r "$WORK/data" "$WORK/restic-out$WORK/data" >/dev/null || { echo "restic restore differs" >&2; exit 1; }

mbps() { python3 -c "print(f'{$BYTES/1e6/$1:.0f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
s() { cat "$WORK/$1.secs"; }
m() { python3 -c "print(f'{$(cat "$WORK/$1.rss")/1024:.0f}')"; }
RS=$(du -sb "$WORK/restic" | cut -f1); ZS=$(du -sb "$WORK/res" | cut -f1)

OUT="$ROOT/benches/results/compare-restic-$(date -u +%Y%m%d-%H%M).txt"
mkdir -p "$(dirname "$OUT")"
{
  echo "data set: $BYTES bytes (${GIB} GiB, seed 42), $(nproc) cores, restic $(restic version | cut -d' ' -f2)"
  printf "%-11s %12s %12s %12s %14s %12s %12s\n" tool "backup MB/s" "2nd backup s" "restore MB/s" "stored bytes" "RSS bk MiB" "RSS rs MiB"
  printf "%-11s %12s %12s %12s %14s %12s %12s\n" restic "$(mbps "$(s restic-1)")" "$(s restic-2)" "$(mbps "$(s restic-r)")" "$RS" "$(m restic-1)" "$(m restic-r)"
  printf "%-11s %12s %12s %12s %14s %12s %12s\n" resilience "$(mbps "$(s res-1)")" "$(s res-2)" "$(mbps "$(s res-r)")" "$ZS" "$(m res-1)" "$(m res-r)"
  echo "ratios resilience/restic: backup speed $(ratio "$(s restic-1)" "$(s res-1)")x, restore speed $(ratio "$(s restic-r)" "$(s res-r)")x, stored size $(ratio "$ZS" "$RS")x"
  echo "resilience second backup: $(ratio "$(s res-1)" "$(s res-2)")x faster than its first"
} | tee "$OUT"
