#!/usr/bin/env bash
# WAL archiving, resilience vs pgBackRest, one process per WAL file as Postgres runs them:
#   - synchronous push  (resilience wal-push          vs pgbackrest archive-push)
#   - asynchronous push (resilience wal-push --async  vs pgbackrest archive-push --archive-async)
#   - fetch in order, as recovery asks (resilience wal-fetch --prefetch 8 vs pgbackrest
#     archive-get, synchronous and --archive-async)
#
#   benches/compare-wal.sh                       # 64 segments of 16 MiB, 3 rounds
#   WAL_SEGMENTS=32 ROUNDS=3 PORT=55433 WORK=/tmp/wal-bench benches/compare-wal.sh
#
# Runs as root; the tools run as the postgres OS user. Real segments: a throw-away cluster
# writes them (pgbench-like rows with random hex), archive_command copies them aside. The
# asynchronous loop does what Postgres' archiver does: every segment is marked ready
# (archive_status/<f>.ready) as a busy primary's backlog is, each call is one process, and
# after each success the mark becomes .done. Honest on a shared VM: memory touched first,
# `sync` before each timed step, the tools alternate which goes first, every round starts
# from empty repositories; medians and [min–max]; peak RSS of the per-file processes
# (/usr/bin/time %M) and, sampled, of the background workers (VmHWM), which the per-file
# figure cannot see. Both tools: zstd level 3 and encryption; pgBackRest process-max=4 for
# its asynchronous modes, resilience --parallel 4.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NSEG="${WAL_SEGMENTS:-64}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-55433}"
WORK="${WORK:-/tmp/wal-bench}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
# shellcheck source=lib/bench.sh
. "$ROOT/benches/lib/bench.sh"

[ "$(id -u)" = 0 ] || { echo "run as root (commands switch to the postgres user)" >&2; exit 1; }
case "$WORK" in /|/tmp|/tmp/|"") echo "refusing WORK=$WORK" >&2; exit 1;; esac
if ! command -v pgbackrest >/dev/null || [ ! -x /usr/bin/time ]; then echo "needs pgbackrest and /usr/bin/time" >&2; exit 1; fi

PGU=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK")
pg() { "${PGU[@]}" "$@"; }

cd "$ROOT"
RES_SRC=$(resilience_bin)
if [ -f "$WORK/pgdata/postmaster.pid" ]; then pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m immediate stop >/dev/null 2>&1 || true; fi
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$WORK/walsrc" "$WORK/log"
install -m 0755 "$RES_SRC" "$WORK/bin/resilience"
RES="$WORK/bin/resilience"
chown -R postgres:postgres "$WORK"
cd "$WORK"

# --- real segments -----------------------------------------------------------------------------
echo "generating $NSEG segments of 16 MiB" >&2
pg "$PGBIN/initdb" -D "$WORK/pgdata" -U postgres -A trust >"$WORK/log/initdb.out"
cat >>"$WORK/pgdata/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = 'test ! -f $WORK/walsrc/%f && cp %p $WORK/walsrc/%f'
max_wal_size = 4GB
EOF
pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -l "$WORK/postgres.log" -w start >/dev/null
trap 'pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m fast -w stop >/dev/null 2>&1 || true' EXIT
q() { pg "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "$1"; }
FIRST=$(q "SELECT pg_walfile_name(pg_switch_wal())")
segs() { find "$WORK/walsrc" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' -printf '%f\n' | sort | awk -v f="$FIRST" '$0 > f' | head -n "$NSEG"; }
q "CREATE TABLE walgen (id bigint, h text, filler char(84))" >/dev/null
for i in $(seq 2000); do
  [ "$(segs | wc -l)" -ge "$NSEG" ] && break
  q "INSERT INTO walgen SELECT g, md5(random()::text), '' FROM generate_series(1, 100000) g" >/dev/null
  sleep 0.05
  [ "$i" -lt 2000 ] || { echo "could not generate $NSEG segments" >&2; exit 1; }
done
mapfile -t NAMES < <(segs)
[ "${#NAMES[@]}" -eq "$NSEG" ] || { echo "got ${#NAMES[@]} segments, wanted $NSEG" >&2; exit 1; }
pg "$PGBIN/pg_ctl" -D "$WORK/pgdata" -m fast -w stop >/dev/null
trap - EXIT
# the backlog lives in the (stopped) cluster's own pg_wal: pgBackRest wants it under pg1-path
mv "$WORK/pgdata/pg_wal" "$WORK/pgdata/pg_wal.orig"
SYSID=$(pg "$PGBIN/pg_controldata" "$WORK/pgdata" | awk -F': *' '/Database system identifier/{print $2}')

touch_memory

# --- the tools ---------------------------------------------------------------------------------
RESG=(--repo "$WORK/res-repo" --key-file "$WORK/res.key")
pgbr_conf() {  # pgbr_conf ASYNC
  cat <<EOF
[global]
repo1-path=$WORK/pgbr-repo
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
compress-type=zst
compress-level=3
process-max=4
archive-async=$1
log-level-console=warn
log-level-file=off
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool

[wal]
pg1-path=$WORK/pgdata
EOF
}
PGBR=(/usr/bin/pgbackrest --config="$WORK/pgbackrest.conf" --stanza=wal)

fresh_repos() {
  rm -rf "$WORK/res-repo" "$WORK/res.key" "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-lock" "$WORK/res-spool"
  mkdir -p "$WORK/pgbr-repo" "$WORK/pgbr-spool" "$WORK/pgbr-lock"
  pgbr_conf n >"$WORK/pgbackrest.conf"; chmod 0600 "$WORK/pgbackrest.conf"
  chown -R postgres:postgres "$WORK"
  pg "$RES" init "${RESG[@]}" >/dev/null
  pg "${PGBR[@]}" stanza-create --no-online >/dev/null
}

# pg_wal holding every segment, each marked ready (a primary's backlog)
WALDIR="$WORK/pgdata/pg_wal"
backlog() {
  rm -rf "$WALDIR"; mkdir -p "$WALDIR/archive_status"
  for n in "${NAMES[@]}"; do cp "$WORK/walsrc/$n" "$WALDIR/$n"; : > "$WALDIR/archive_status/$n.ready"; done
  chown -R postgres:postgres "$WALDIR"
}

# an empty data directory to recover into (pgBackRest reads its pg_control)
restore_dir() {
  rm -rf "$WORK/restore" "$WORK/pgbr-spool"/*; mkdir -p "$WORK/restore/pg_wal" "$WORK/restore/global"
  cp "$WORK/pgdata/global/pg_control" "$WORK/restore/global/"
  chown -R postgres:postgres "$WORK/restore" "$WORK/pgbr-spool"
}

# one process per file, as Postgres runs them:
#   bash -c "$EACH" _ MODE N CMD(N words)... NAME...
# MODE push: CMD pg_wal/NAME, then NAME.ready -> NAME.done; MODE fetch: CMD NAME pg_wal/RECOVERYXLOG,
# with RECOVERYXLOG removed first, as Postgres' RestoreArchivedFile does (replacing a file by
# rename or truncation makes ext4 write back the new one's data first: 11 ms a segment)
# shellcheck disable=SC2016  # expanded by the inner bash, $WORK spliced in
EACH='mode=$1; n=$2; shift 2; cmd=("${@:1:n}"); shift "$n"
for f; do
  if [ "$mode" = push ]; then
    "${cmd[@]}" "'"$WORK"'/pgdata/pg_wal/$f" >/dev/null || exit 1
    mv "'"$WORK"'/pgdata/pg_wal/archive_status/$f.ready" "'"$WORK"'/pgdata/pg_wal/archive_status/$f.done"
  else
    rm -f "'"$WORK"'/restore/pg_wal/RECOVERYXLOG"   # as Postgres does before restore_command
    "${cmd[@]}" "$f" "'"$WORK"'/restore/pg_wal/RECOVERYXLOG" >/dev/null || exit 1
    cmp -s "'"$WORK"'/restore/pg_wal/RECOVERYXLOG" "'"$WORK"'/walsrc/$f" || { echo "$f fetched wrong" >&2; exit 1; }
  fi
done'

# peak VmHWM (KiB) of background workers (matching PATTERN) while a step runs. VmHWM is a
# high-water mark, so a sample every half second (and one as the step ends: the workers idle
# a while before they exit) sees the peak; sampling every 50 ms took 15% of a core (a pgrep
# is 10 CPU-ms here), which delayed the very processes being timed. The first sample is taken
# half a second in, not as the step starts (when no worker runs yet, and the step's first
# calls would share the machine with it).
sample_workers() {
  local pattern="$1" out="$2" max=0
  sample() {
    for p in $(pgrep -f -- "$pattern" 2>/dev/null); do
      h=$(awk '/VmHWM/{print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
      if [ "${h:-0}" -gt "$max" ]; then max=$h; fi
    done
  }
  while sleep 0.5 && [ ! -f "$out.stop" ]; do sample; done
  sample
  echo "$max" > "$out"
}

bench_init "$WORK"
STEP_AS=("${PGU[@]}")
# step TOOL STEP ROUND WORKER_PATTERN MODE CMD...: the library's timed step over every segment,
# with the background workers' peak RSS as a column of its own (before the load)
step() {
  local tool="$1" name="$2" round="$3" pattern="$4" mode="$5"; shift 5
  rm -f "$WORK/worker.rss" "$WORK/worker.rss.stop"
  sample_workers "$pattern" "$WORK/worker.rss" & local sampler=$!
  timed "$tool" "$name" "$round" bash -c "$EACH" _ "$mode" "$#" "$@" "${NAMES[@]}"
  touch "$WORK/worker.rss.stop"; wait "$sampler"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tool" "$name" "$round" "$STEP_SECS" "$STEP_RSS" "$(cat "$WORK/worker.rss")" "$STEP_LOAD" >> "$BENCH_TSV"
  echo "  round $round $tool $name: ${STEP_SECS}s" >&2
}

# wait until no background worker of PATTERN runs (so the next step starts on an idle machine)
settle() { for _ in $(seq 400); do pgrep -f -- "$1" >/dev/null || return 0; sleep 0.1; done; }

res_round() {
  local r="$1"
  fresh_repos; backlog
  step resilience push-sync "$r" "--async-worker" push "$RES" "${RESG[@]}" wal-push --source main
  rm -rf "$WORK/res-repo" "$WORK/res.key"; pg "$RES" init "${RESG[@]}" >/dev/null; backlog
  step resilience push-async "$r" "--async-worker" push "$RES" "${RESG[@]}" wal-push --async --parallel 4 --spool "$WORK/res-spool" --source main
  settle --async-worker
  restore_dir
  step resilience fetch "$r" "--prefetch-worker" fetch "$RES" "${RESG[@]}" wal-fetch --prefetch 8 --source main
  settle --prefetch-worker
}

pgbr_round() {
  local r="$1"
  fresh_repos; backlog
  step pgbackrest push-sync "$r" "archive-push:async" push "${PGBR[@]}" archive-push
  rm -rf "$WORK/pgbr-repo"/* "$WORK/pgbr-spool"/*; pg "${PGBR[@]}" stanza-create --no-online >/dev/null; backlog
  step pgbackrest push-async "$r" "archive-push:async" push "${PGBR[@]}" --archive-async archive-push
  settle "archive-push:async"
  restore_dir
  step pgbackrest fetch "$r" "archive-get:async" fetch "${PGBR[@]}" --pg1-path="$WORK/restore" archive-get
  restore_dir
  step pgbackrest fetch-async "$r" "archive-get:async" fetch "${PGBR[@]}" --pg1-path="$WORK/restore" --archive-async archive-get
  settle "archive-get:async"
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r of $ROUNDS" >&2
  if [ $((r % 2)) -eq 1 ]; then res_round "$r"; pgbr_round "$r"; else pgbr_round "$r"; res_round "$r"; fi
done

OUT=$(results_file compare-wal)
python3 - "$BENCH_TSV" "$NSEG" "$ROUNDS" "$(pgbackrest version)" "$("$RES" --version)" "$(nproc)" "$SYSID" > "$OUT" <<'PY'
import statistics, sys
tsv, nseg, rounds, pgbr, res, cores, sysid = sys.argv[1:]
nseg = int(nseg)
rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip()]
def of(tool, step):
    return [(float(s), int(k), int(w or 0), float(l)) for t, st, _, s, k, w, l in rows if t == tool and st == step]
def rate(xs):
    r = [nseg / x[0] for x in xs]
    return statistics.median(r), min(r), max(r)
print(f"# WAL archiving: resilience vs pgBackRest, {nseg} segments of 16 MiB, one process per file\n")
print(f"`WAL_SEGMENTS={nseg} ROUNDS={rounds} benches/compare-wal.sh`; {cores} cores; {pgbr}; {res}. "
      f"Memory touched first, `sync` before each step, tools alternating which goes first, fresh "
      f"repositories every round; segments/s acknowledged (or fetched), median [min–max] over {rounds} rounds.\n")
print("| step | tool | segments/s | vs pgBackRest sync | peak RSS per-file process MiB | peak RSS background worker MiB | load before (median) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
base = {"push": rate(of("pgbackrest", "push-sync"))[0], "fetch": rate(of("pgbackrest", "fetch"))[0]}
for step, label, kind in [("push-sync", "push, synchronous", "push"), ("push-async", "push, asynchronous", "push"),
                          ("fetch", "fetch in order (resilience: --prefetch 8; pgBackRest: sync)", "fetch"),
                          ("fetch-async", "fetch in order (pgBackRest --archive-async)", "fetch")]:
    for tool in ["resilience", "pgbackrest"]:
        xs = of(tool, step)
        if not xs:
            continue
        m, lo, hi = rate(xs)
        print(f"| {label} | {tool} | {m:.1f} [{lo:.1f}–{hi:.1f}] | {m / base[kind]:.2f}× | "
              f"{max(x[1] for x in xs) / 1024:.0f} | {max(x[2] for x in xs) / 1024:.0f} | "
              f"{statistics.median([x[3] for x in xs]):.2f} |")
PY
cat "$OUT"
