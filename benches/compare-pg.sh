#!/usr/bin/env bash
# resilience, pgBackRest and pg_basebackup side by side, in one run, on one pgbench cluster:
# base backup, restore of the files, and WAL push (one process per segment, as archive_command).
#
#   benches/compare-pg.sh                  # pgbench scale 100 (~1.5 GB); SCALE=5 for a quick run
#   SCALE=100 WAL_SEGMENTS=64 PORT=55432 WORK=/tmp/pgbench-work benches/compare-pg.sh
#
# Runs as root; every Postgres-side command (and resilience, which runs as archive_command too)
# runs as the postgres OS user. Everything lives under $WORK (removed at the start, kept at the
# end for inspection); the bench cluster listens on 127.0.0.1:$PORT and is stopped on exit.
# Both backup tools encrypt and compress with zstd level 3; pgBackRest uses process-max=2.
# The page cache is warm for every tool (the data directory is read once before the backups).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCALE="${SCALE:-100}"
NSEG="${WAL_SEGMENTS:-64}"
PORT="${PORT:-55432}"
WORK="${WORK:-/tmp/pgbench-work}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
PGDATA="$WORK/pgdata"
LOG="$WORK/log"                       # stdout/stderr/timings of every measured step

[ "$(id -u)" = 0 ] || { echo "run as root (commands switch to the postgres user)" >&2; exit 1; }
case "$WORK" in /|/tmp|/tmp/|"") echo "refusing WORK=$WORK" >&2; exit 1;; esac

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need /usr/bin/time time
need pgbackrest pgbackrest
need python3 python3

# as the postgres user (setpriv execs, so /usr/bin/time sees the tool's own peak RSS)
PGU=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK")
pg() { "${PGU[@]}" "$@"; }
q() { pg "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "$1"; }

cd "$ROOT"
cargo build --release -p resilience-cli >&2

# --- fresh work dir (stop a cluster a previous, interrupted run may have left) -------------
[ -f "$PGDATA/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$LOG" "$WORK/walsrc"
# a private copy of the binary: postgres can run it, and a concurrent rebuild cannot swap it mid-run
install -m 0755 "$ROOT/target/release/resilience" "$WORK/bin/resilience"
RES="$WORK/bin/resilience"
chown -R postgres:postgres "$WORK"
cd "$WORK"

stop_cluster() {
  [ -f "$PGDATA/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
}
trap stop_cluster EXIT

# run LABEL CMD...: as postgres; wall seconds and peak RSS (KiB) into $LOG/LABEL.secs / .rss
run() {
  local label="$1"; shift
  /usr/bin/time -f "%e %M" -o "$LOG/$label.time" "${PGU[@]}" "$@" >"$LOG/$label.out" 2>"$LOG/$label.err" || {
    tail -n 30 "$LOG/$label.err" >&2; echo "$label failed (logs in $LOG)" >&2; exit 1; }
  read -r secs rss < "$LOG/$label.time"
  echo "$secs" > "$LOG/$label.secs"; echo "$rss" > "$LOG/$label.rss"
  echo "  $label: ${secs}s, peak RSS $((rss / 1024)) MiB" >&2
}

size() { du -sb "$1" | cut -f1; }

# wait until Postgres has archived every finished segment (no .ready left), or fail
wait_archived() {
  for _ in $(seq 600); do
    compgen -G "$PGDATA/pg_wal/archive_status/*.ready" >/dev/null || return 0
    sleep 0.5
  done
  q "SELECT * FROM pg_stat_archiver" >&2 || true
  tail -n 30 "$WORK/postgres.log" >&2; echo "WAL archiving is stuck" >&2; exit 1
}

# point archive_command at CMD, then flush the current segment through it
set_archive_command() {
  q "ALTER SYSTEM SET archive_command = '${1//\'/\'\'}'" >/dev/null
  q "SELECT pg_reload_conf()" >/dev/null
  sleep 1   # the archiver picks the new setting up on its next cycle
  q "SELECT pg_switch_wal()" >/dev/null
  wait_archived
}

# a restored data directory must look like a data directory with all of the tables in it
check_restore() {
  local dir="$1" got
  [ -f "$dir/PG_VERSION" ] && [ -f "$dir/global/pg_control" ] || { echo "$dir: not a data directory" >&2; exit 1; }
  got=$(size "$dir/base")
  python3 -c "import sys; sys.exit(0 if abs($got - $BASE_BYTES) <= 0.05 * $BASE_BYTES else 1)" || {
    echo "$dir/base holds $got bytes, the source $BASE_BYTES" >&2; exit 1; }
}

# --- the cluster -----------------------------------------------------------------------------
echo "initdb + pgbench -i -s $SCALE on 127.0.0.1:$PORT" >&2
pg "$PGBIN/initdb" -D "$PGDATA" -U postgres -A trust >"$LOG/initdb.out"
cat >>"$PGDATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '/bin/true'
max_wal_size = 4GB
checkpoint_timeout = 30min
EOF
pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w start >/dev/null
run pgbench-init "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres
q "CHECKPOINT" >/dev/null
wait_archived
DB_BYTES=$(q "SELECT pg_database_size('postgres')")
find "$PGDATA" -type f -exec cat {} + >/dev/null   # warm the page cache for everybody
sync

# --- pg_basebackup: plain files, no compression, no WAL; "restore" = cp -a of the result ----
echo "pg_basebackup" >&2
run pgbb-backup "$PGBIN/pg_basebackup" -D "$WORK/pgbb" -Fp -X none -c fast -h 127.0.0.1 -p "$PORT" -U postgres
PGBB_BYTES=$(size "$WORK/pgbb")
BASE_BYTES=$(size "$WORK/pgbb/base")
sync
run pgbb-restore cp -a "$WORK/pgbb" "$WORK/pgbb-restore"
check_restore "$WORK/pgbb-restore"
rm -rf "$WORK/pgbb-restore"
sync

# --- resilience --------------------------------------------------------------------------------
echo "resilience" >&2
RESG=(--repo "$WORK/res-repo" --key-file "$WORK/res.key")
pg "$RES" init "${RESG[@]}" >"$LOG/res-init.out"
set_archive_command "$RES ${RESG[*]} wal-push --source main %p"
sync
before=$(size "$WORK/res-repo")
run res-backup "$RES" "${RESG[@]}" pg backup --source main --pgdata "$PGDATA" \
  --dsn "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" --json
RES_BYTES=$(( $(size "$WORK/res-repo") - before ))
sync
run res-restore "$RES" "${RESG[@]}" pg restore --source main --pgdata "$WORK/res-restore" --target immediate --json
check_restore "$WORK/res-restore"
rm -rf "$WORK/res-restore"
sync

# --- pgBackRest --------------------------------------------------------------------------------
echo "pgBackRest" >&2
# pgbr_conf REPO STANZA: a config with one repository and the bench cluster as STANZA
pgbr_conf() {
  cat <<EOF
[global]
repo1-path=$1
repo1-retention-full=2
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass=bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
compress-type=zst
compress-level=3
process-max=2
log-level-console=warn
log-level-file=info
log-path=$WORK/pgbr-log
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool
start-fast=y
archive-async=n

[$2]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$WORK
EOF
}
pgbr_conf "$WORK/pgbr-repo" bench >"$WORK/pgbackrest.conf"
pgbr_conf "$WORK/pgbr-walrepo" walbench >"$WORK/pgbackrest-wal.conf"
mkdir -p "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
chown -R postgres:postgres "$WORK"
chmod 0600 "$WORK"/pgbackrest*.conf
PGBR=(/usr/bin/pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
pg "${PGBR[@]}" stanza-create
set_archive_command "${PGBR[*]} archive-push %p"
pg "${PGBR[@]}" check
wait_archived
sync
before=$(size "$WORK/pgbr-repo")
run pgbr-backup "${PGBR[@]}" backup --type=full
PGBR_BYTES=$(( $(size "$WORK/pgbr-repo") - before ))
sync
install -d -m 0700 -o postgres -g postgres "$WORK/pgbr-restore"
run pgbr-restore "${PGBR[@]}" --pg1-path="$WORK/pgbr-restore" restore --type=immediate
check_restore "$WORK/pgbr-restore"
rm -rf "$WORK/pgbr-restore"
sync

# --- WAL push: N real, full segments of this cluster, pushed one process per segment ----------
echo "generating $NSEG WAL segments" >&2
set_archive_command "test ! -f $WORK/walsrc/%f && cp %p $WORK/walsrc/%f"
# segments after the one just switched away from are full (nothing else switches)
FIRST=$(q "SELECT pg_walfile_name(pg_switch_wal())")
segs() { find "$WORK/walsrc" -maxdepth 1 -regextype posix-extended -regex '.*/[0-9A-F]{24}' -printf '%f\n' \
           | sort | awk -v f="$FIRST" '$0 > f' | head -n "$NSEG"; }
q "CREATE TABLE walgen AS SELECT aid, bid, abalance, md5(aid::text) AS h, filler FROM pgbench_accounts LIMIT 0" >/dev/null
for i in $(seq 1000); do
  [ "$(segs | wc -l)" -ge "$NSEG" ] && break
  # ~13 MB of heap per round: pgbench rows (blank-padded) with a random hex column
  q "INSERT INTO walgen SELECT aid, bid, abalance, md5(random()::text), filler FROM pgbench_accounts LIMIT 100000" >/dev/null
  [ "$i" -lt 1000 ] || { echo "could not generate $NSEG segments" >&2; exit 1; }
done
wait_archived
mapfile -t SEGS < <(segs | sed "s|^|$WORK/walsrc/|")
[ "${#SEGS[@]}" -eq "$NSEG" ] || { echo "got ${#SEGS[@]} segments, wanted $NSEG" >&2; exit 1; }
WAL_BYTES=$(du -cb "${SEGS[@]}" | tail -n1 | cut -f1)
sync

# each push is its own process, exactly as Postgres runs archive_command:
# bash -c "$PUSH_EACH" _ N CMD(N words)... SEGMENT...  runs CMD SEGMENT for each segment in turn
PUSH_EACH='n=$1; shift; cmd=("${@:1:n}"); shift "$n"; for f; do "${cmd[@]}" "$f" >/dev/null || exit 1; done'
echo "WAL push" >&2
RESW=(--repo "$WORK/res-walrepo" --key-file "$WORK/res-wal.key")
pg "$RES" init "${RESW[@]}" >"$LOG/res-walinit.out"
before=$(size "$WORK/res-walrepo")
c=("$RES" "${RESW[@]}" wal-push --source main)
run res-walpush bash -c "$PUSH_EACH" _ "${#c[@]}" "${c[@]}" "${SEGS[@]}"
RES_WAL_BYTES=$(( $(size "$WORK/res-walrepo") - before ))

PGBRW=(/usr/bin/pgbackrest --config="$WORK/pgbackrest-wal.conf" --stanza=walbench)
pg "${PGBRW[@]}" stanza-create
before=$(size "$WORK/pgbr-walrepo")
c=("${PGBRW[@]}" archive-push)
run pgbr-walpush bash -c "$PUSH_EACH" _ "${#c[@]}" "${c[@]}" "${SEGS[@]}"
PGBR_WAL_BYTES=$(( $(size "$WORK/pgbr-walrepo") - before ))
sync

# --- report ------------------------------------------------------------------------------------
s() { cat "$LOG/$1.secs"; }
mib() { python3 -c "print(f'{$(cat "$LOG/$1.rss")/1024:.0f}')"; }
mb() { python3 -c "print(f'{$1/1e6:.1f}')"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
segps() { python3 -c "print(f'{$NSEG/$1:.1f} segments/s ({$WAL_BYTES/1048576/$1:.0f} MiB/s)')"; }
row() { printf '| %s | %s | %s | %s | %s | %s |\n' "$@"; }

OUT="$ROOT/benches/results/pg-compare-$(date +%Y%m%d).md"
mkdir -p "$(dirname "$OUT")"
{
  echo "# Postgres: resilience vs pgBackRest vs pg_basebackup ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "pgbench scale $SCALE (database $(mb "$DB_BYTES") MB), $(nproc) cores, warm page cache;" \
       "$("$PGBIN/postgres" --version), $(pgbackrest version), $("$RES" --version)."
  echo "Both backup tools: zstd level 3 and encryption (pgBackRest aes-256-cbc, process-max=2)."
  echo "MB = 10^6 bytes; stored = growth of the repository over the backup (incl. the WAL it archives);"
  echo "peak RSS is that of the largest single process."
  echo
  row tool "backup s" "stored MB" "restore s" "backup max RSS MiB" "restore max RSS MiB"
  row --- ---: ---: ---: ---: ---:
  row resilience "$(s res-backup)" "$(mb "$RES_BYTES")" "$(s res-restore)" "$(mib res-backup)" "$(mib res-restore)"
  row pgBackRest "$(s pgbr-backup)" "$(mb "$PGBR_BYTES")" "$(s pgbr-restore)" "$(mib pgbr-backup)" "$(mib pgbr-restore)"
  row "pg_basebackup (plain, -X none; restore = cp -a)" "$(s pgbb-backup)" "$(mb "$PGBB_BYTES")" "$(s pgbb-restore)" "$(mib pgbb-backup)" "$(mib pgbb-restore)"
  echo
  echo "WAL push, $NSEG segments of 16 MiB, one process per segment into a fresh repository:"
  echo
  echo "- resilience: $(s res-walpush) s, $(segps "$(s res-walpush)"), stored $(mb "$RES_WAL_BYTES") MB, max RSS $(mib res-walpush) MiB"
  echo "- pgBackRest: $(s pgbr-walpush) s, $(segps "$(s pgbr-walpush)"), stored $(mb "$PGBR_WAL_BYTES") MB, max RSS $(mib pgbr-walpush) MiB"
  echo
  echo "Ratios pgBackRest time / resilience time: backup $(ratio "$(s pgbr-backup)" "$(s res-backup)")x," \
       "restore $(ratio "$(s pgbr-restore)" "$(s res-restore)")x, WAL push $(ratio "$(s pgbr-walpush)" "$(s res-walpush)")x."
  echo "Ratios resilience size / pgBackRest size: base backup $(ratio "$RES_BYTES" "$PGBR_BYTES")x," \
       "WAL $(ratio "$RES_WAL_BYTES" "$PGBR_WAL_BYTES")x."
} | tee "$OUT"
