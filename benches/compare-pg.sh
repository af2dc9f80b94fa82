#!/usr/bin/env bash
# resilience, pgBackRest and pg_basebackup side by side, in one run, on one pgbench cluster:
# base backup and restore of the files, over ROUNDS rounds. (WAL archiving, push and fetch, is
# benches/compare-wal.sh's.)
#
#   benches/compare-pg.sh                  # pgbench scale 100 (~1.5 GB), 3 rounds
#   SCALE=300 benches/compare-pg.sh        # ~4.5 GB (about 20 GB free under $WORK wanted)
#   SCALE=5 ROUNDS=3 PORT=55432 WORK=/tmp/pgbench-work MEMORY=64MiB benches/compare-pg.sh
#   RESILIENCE_BIN=/path/to/resilience benches/compare-pg.sh   # no cargo build
#
# Runs as root; every Postgres-side command and both backup tools run as the postgres OS user
# (setpriv execs, so /usr/bin/time sees the tool's own peak RSS). Everything lives under $WORK
# (removed at the start, kept at the end for inspection, but for the file system every restore
# writes into, new each time: see fresh_fs_init); the bench cluster listens on
# 127.0.0.1:$PORT and is stopped on exit. Both backup tools encrypt and compress with zstd:
# pgBackRest at level 3 with process-max=2, resilience at its repository's default level (1), resilience --memory $MEMORY. pg_basebackup (plain
# files, no compression, -X none; its "restore" is cp -a) is the reference, and so is the disk
# reference: the bytes a restore writes, in one file, written with dd and synced once a round
# (the disk's speed varies).
#
# Honest on a shared VM: memory touched first, the page cache warm for everybody (the data
# directory is read once before the rounds) and written back (`sync`) before every timed step;
# each round backs up into fresh repositories, resilience and pgBackRest alternating which goes
# first (pg_basebackup last); archive_command points at the tool whose backup runs, so that no
# tool's backup pays for another's WAL push; every restore is checked. Medians and [min–max],
# peak RSS and the machine's load go to benches/results/pg-compare-<time>.md with the command.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCALE="${SCALE:-100}"
ROUNDS="${ROUNDS:-3}"
MEMORY="${MEMORY:-64MiB}"
PORT="${PORT:-55432}"
WORK="${WORK:-/tmp/pgbench-work}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
PGDATA="$WORK/pgdata"
LOG="$WORK/log"
# shellcheck source=lib/bench.sh
. "$ROOT/benches/lib/bench.sh"

[ "$(id -u)" = 0 ] || { echo "run as root (commands switch to the postgres user)" >&2; exit 1; }
case "$WORK" in /|/tmp|/tmp/|"") echo "refusing WORK=$WORK" >&2; exit 1;; esac

need /usr/bin/time time
need pgbackrest pgbackrest
need python3 python3

PGU=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK")
pg() { "${PGU[@]}" "$@"; }
q() { pg "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -c "$1"; }

RES_SRC=$(resilience_bin)

# --- fresh work dir (stop a cluster, and drop a restore file system, that a previous,
# interrupted run may have left) ----------------------------------------------------------------
FS_IMG="$WORK/restore-fs.img" MNT="$WORK/restore-fs" LOOP_DEV=""
if [ -f "$PGDATA/postmaster.pid" ]; then pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true; fi
umount "$MNT" 2>/dev/null || true
if [ -f "$FS_IMG" ]; then losetup -j "$FS_IMG" | cut -d: -f1 | xargs -r -n1 losetup -d || true; fi
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$LOG" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
# a private copy of the binary: postgres can run it, and a concurrent rebuild cannot swap it mid-run
install -m 0755 "$RES_SRC" "$WORK/bin/resilience"
RES="$WORK/bin/resilience"
bench_init "$WORK"
STEP_AS=("${PGU[@]}")
chown -R postgres:postgres "$WORK"
cd "$WORK"

stop_cluster() {
  if [ -f "$PGDATA/postmaster.pid" ]; then pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true; fi
}
on_exit() { stop_cluster; fresh_fs_cleanup; }
trap on_exit EXIT

size() { du -sb "$1" | cut -f1; }

# wait until Postgres has archived every finished segment (no .ready left), or fail
wait_archived() {
  for _ in $(seq 1200); do
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
  if [ ! -f "$dir/PG_VERSION" ] || [ ! -f "$dir/global/pg_control" ]; then echo "$dir: not a data directory" >&2; exit 1; fi
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
pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$LOG/pgbench-init.out" 2>&1
q "CHECKPOINT" >/dev/null
wait_archived
DB_BYTES=$(q "SELECT pg_database_size('postgres')")
BASE_BYTES=$(size "$PGDATA/base")

# --- the tools' configuration ------------------------------------------------------------------
RESG=(--repo "$WORK/res-repo" --key-file "$WORK/res.key" --memory "$MEMORY")
PGBR=(/usr/bin/pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
# a config with one (new) repository and the bench cluster as stanza "bench"
pgbr_conf() {
  cat <<EOF
[global]
repo1-path=$WORK/pgbr-repo
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

[bench]
pg1-path=$PGDATA
pg1-port=$PORT
pg1-socket-path=$WORK
EOF
}

touch_memory
find "$PGDATA" -type f -exec cat {} + >/dev/null   # warm the page cache for everybody
# the bytes a restore writes (the data directory but its WAL), in one file: the disk reference's
find "$PGDATA" -path "$PGDATA/pg_wal" -prune -o -type f -print0 | xargs -0 cat >"$WORK/floor-src"
chown postgres:postgres "$WORK/floor-src"
# every restore (and the floor) writes into a new file system of its own
fresh_fs_init "$FS_IMG" "$MNT" "$(size "$WORK/floor-src")"
SIZES="$WORK/stored.tsv"; : > "$SIZES"   # tool, round, bytes the backup added to its repository

# --- the rounds --------------------------------------------------------------------------------
res_round() {
  local r="$1" before
  set_archive_command /bin/true
  rm -rf "$WORK/res-repo" "$WORK/res.key"
  pg "$RES" init "${RESG[@]}" >"$LOG/res-init.out"
  set_archive_command "$RES ${RESG[*]} wal-push --source main %p"
  before=$(size "$WORK/res-repo")
  step resilience backup "$r" "$RES" "${RESG[@]}" pg backup --source main --pgdata "$PGDATA" \
    --dsn "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" --json
  printf 'resilience\t%s\t%s\n' "$r" "$(( $(size "$WORK/res-repo") - before ))" >> "$SIZES"
  fresh_target postgres:postgres
  step resilience restore "$r" "$RES" "${RESG[@]}" pg restore --source main --pgdata "$MNT/res-restore" \
    --target immediate --json
  check_restore "$MNT/res-restore"
}

pgbr_round() {
  local r="$1" before
  set_archive_command /bin/true
  rm -rf "$WORK/pgbr-repo"
  install -d -m 0750 -o postgres -g postgres "$WORK/pgbr-repo"
  pgbr_conf >"$WORK/pgbackrest.conf"
  chown postgres:postgres "$WORK/pgbackrest.conf"; chmod 0600 "$WORK/pgbackrest.conf"
  pg "${PGBR[@]}" stanza-create >"$LOG/pgbr-stanza.out" 2>&1
  set_archive_command "${PGBR[*]} archive-push %p"
  pg "${PGBR[@]}" check >"$LOG/pgbr-check.out" 2>&1
  before=$(size "$WORK/pgbr-repo")
  step pgBackRest backup "$r" "${PGBR[@]}" backup --type=full
  printf 'pgBackRest\t%s\t%s\n' "$r" "$(( $(size "$WORK/pgbr-repo") - before ))" >> "$SIZES"
  fresh_target postgres:postgres
  install -d -m 0700 -o postgres -g postgres "$MNT/pgbr-restore"
  step pgBackRest restore "$r" "${PGBR[@]}" --pg1-path="$MNT/pgbr-restore" restore --type=immediate
  check_restore "$MNT/pgbr-restore"
}

pgbb_round() {
  local r="$1"
  set_archive_command /bin/true
  rm -rf "$WORK/pgbb"
  step pg_basebackup backup "$r" "$PGBIN/pg_basebackup" -D "$WORK/pgbb" -Fp -X none -c fast \
    -h 127.0.0.1 -p "$PORT" -U postgres
  printf 'pg_basebackup\t%s\t%s\n' "$r" "$(size "$WORK/pgbb")" >> "$SIZES"
  fresh_target postgres:postgres
  step pg_basebackup restore "$r" cp -a "$WORK/pgbb" "$MNT/pgbb-restore"
  check_restore "$MNT/pgbb-restore"
  rm -rf "$WORK/pgbb"
}

# The disk reference: the data directory's bytes written once, to one file, then synced. It
# writes first and waits for the write-back after, so a restore that starts its write-back as it
# writes can take less; when the disk is the bottleneck (its speed varies several-fold on a
# shared VM), every tool's restore takes about this long.
floor_round() {
  fresh_target postgres:postgres
  step disk write "$1" dd if="$WORK/floor-src" of="$MNT/floor" bs=4M conv=fsync status=none
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r of $ROUNDS" >&2
  if [ $((r % 2)) -eq 1 ]; then res_round "$r"; pgbr_round "$r"; else pgbr_round "$r"; res_round "$r"; fi
  pgbb_round "$r"
  floor_round "$r"
done

# --- report ------------------------------------------------------------------------------------
stored() {  # median bytes a backup added, in MB
  awk -v t="$1" -F'\t' '$1 == t {print $3}' "$SIZES" | sort -n \
    | awk '{v[NR] = $1} END {m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2; printf "%.1f", m / 1e6}'
}
OUT=$(results_file pg-compare)
{
  echo "# Postgres: resilience vs pgBackRest vs pg_basebackup ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "pgbench scale $SCALE (database $(python3 -c "print(f'{$DB_BYTES/1e6:.1f}')") MB);" \
       "$("$PGBIN/postgres" --version), $(pgbackrest version), $("$RES" --version)."
  echo "Both backup tools: zstd and encryption (pgBackRest level 3, aes-256-cbc, process-max=2;"
  echo "resilience its default level 1, --memory $MEMORY); a fresh repository every round; restores with recovery to the"
  echo "end of the backup (--target immediate, --type=immediate) into a new directory, checked;"
  echo "each restore writes into a new file system: $FRESH."
  echo
  report_table pgBackRest resilience "base backup=backup" "restore=restore"
  echo
  echo "Reference, pg_basebackup (plain files, no compression or encryption, -X none; restore = \`cp -a\`):"
  echo
  report_table pg_basebackup resilience "base backup=backup" "restore=restore"
  echo
  echo "The disk reference: the data directory's bytes but its WAL, $(python3 -c "print(f'{$(size "$WORK/floor-src")/1e6:.1f}')") MB in one file," \
       "written with \`dd bs=4M conv=fsync\` once a round (written first, synced after: a restore that overlaps the two can take less):"
  echo
  report_table disk resilience "restore=write:restore"
  echo
  report_table disk pgBackRest "restore=write:restore"
  echo
  echo "Stored (median MB, 10^6 bytes, a backup's growth of its repository, incl. the WAL it archives):" \
       "resilience $(stored resilience), pgBackRest $(stored pgBackRest), pg_basebackup $(stored pg_basebackup)."
  echo
  report_footer SCALE ROUNDS MEMORY
} | tee "$OUT"
