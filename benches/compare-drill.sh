#!/usr/bin/env bash
# Drill RTO: `resilience drill` of a pgbench cluster next to the same restore done by hand with
# pgBackRest (restore, start on a new port, recover to the end of the archived WAL, promote,
# run the check query), on one cluster that archives into both tools at once, over ROUNDS rounds
# (the drills of one backup each: a drill leaves its source untouched).
#
#   benches/compare-drill.sh                  # pgbench scale 50 (~750 MB), 3 rounds
#   SCALE=5 ROUNDS=3 PORT=55433 WORK=/tmp/drill-work benches/compare-drill.sh
#   RESILIENCE_BIN=/path/to/resilience benches/compare-drill.sh   # no cargo build
#
# Runs as root; every Postgres-side command, pgBackRest and resilience run as the postgres OS
# user. Everything lives under $WORK (removed at the start, kept at the end); the bench cluster
# listens on 127.0.0.1:$PORT and is stopped on exit. Both tools encrypt and compress with zstd
# level 3; pgBackRest uses process-max=2. After the backups, pgbench writes $TXNS transactions
# so that both restores replay WAL past their backup. Honest on a shared VM: memory touched
# first, `sync` before every timed step, the tools alternating which goes first, each restore
# into a new directory and checked (the check query); medians and [min–max] of the drill's
# reported RTO and of both whole commands, peak RSS and the load go to
# benches/results/drill-compare-<time>.md with the command.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCALE="${SCALE:-50}"
TXNS="${TXNS:-2000}"
ROUNDS="${ROUNDS:-3}"
PORT="${PORT:-55433}"
WORK="${WORK:-/tmp/drill-work}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
PGDATA="$WORK/pgdata"
LOG="$WORK/log"
CHECK_SQL="select count(*) from pgbench_accounts"
# shellcheck source=lib/bench.sh
. "$ROOT/benches/lib/bench.sh"

[ "$(id -u)" = 0 ] || { echo "run as root (commands switch to the postgres user)" >&2; exit 1; }
case "$WORK" in /|/tmp|/tmp/|"") echo "refusing WORK=$WORK" >&2; exit 1;; esac

need /usr/bin/time time
need pgbackrest pgbackrest
need python3 python3

PGU=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK")
pg() { "${PGU[@]}" "$@"; }
q() { local port="${2:-$PORT}"; pg "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "$1"; }

cd "$ROOT"
RESILIENCE_BIN="${RESILIENCE_BIN:-${RES_BIN:-}}"   # RES_BIN: the old name
RES_BIN=$(resilience_bin)

for d in "$PGDATA" "$WORK/pgbr-restore"; do
  if [ -f "$d/postmaster.pid" ]; then pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true; fi
done
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$LOG" "$WORK/scratch" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
install -m 0755 "$RES_BIN" "$WORK/bin/resilience"
RES="$WORK/bin/resilience"
RESG=(--repo "$WORK/res-repo" --key-file "$WORK/res.key")
bench_init "$WORK"
chown -R postgres:postgres "$WORK"
cd "$WORK"

cleanup() {
  for d in "$PGDATA" "$WORK/pgbr-restore"; do
    if [ -f "$d/postmaster.pid" ]; then pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true; fi
  done
}
trap cleanup EXIT

wait_archived() {
  for _ in $(seq 600); do
    compgen -G "$PGDATA/pg_wal/archive_status/*.ready" >/dev/null || return 0
    sleep 0.5
  done
  q "SELECT * FROM pg_stat_archiver" >&2 || true
  echo "WAL archiving is stuck" >&2; exit 1
}

# --- the tools' repositories ------------------------------------------------------------------
pg "$RES" "${RESG[@]}" init >"$LOG/res-init.out"
cat >"$WORK/pgbackrest.conf" <<EOF
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
chown postgres:postgres "$WORK/pgbackrest.conf"; chmod 0600 "$WORK/pgbackrest.conf"
PGBR=(/usr/bin/pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)

# --- the cluster, archiving into both -----------------------------------------------------------
echo "initdb + pgbench -i -s $SCALE on 127.0.0.1:$PORT" >&2
pg "$PGBIN/initdb" -D "$PGDATA" -U postgres -A trust >"$LOG/initdb.out"
cat >>"$PGDATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_command = '$RES ${RESG[*]} wal-push --source main %p && ${PGBR[*]} archive-push %p'
max_wal_size = 4GB
checkpoint_timeout = 30min
EOF
pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$WORK/postgres.log" -w start >/dev/null
pg "${PGBR[@]}" stanza-create
pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$LOG/pgbench-init.out" 2>&1
q "CHECKPOINT" >/dev/null
wait_archived
DB_BYTES=$(q "SELECT pg_database_size('postgres')")

# --- backups (the figure the drill checks is recorded as the daemon records it) ---------------
echo "backups" >&2
FIGURE=$(q "$CHECK_SQL")
STEP_AS=("${PGU[@]}")
touch_memory
timed resilience backup 0 "$RES" "${RESG[@]}" pg backup --source main --pgdata "$PGDATA" \
  --dsn "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" --label "drill.query.accounts=$FIGURE" --json
RES_BACKUP="$STEP_SECS"
timed pgBackRest backup 0 "${PGBR[@]}" backup --type=full
PGBR_BACKUP="$STEP_SECS"
# WAL past both backups, archived, for both restores to replay
pg "$PGBIN/pgbench" -n -t "$TXNS" -c 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$LOG/pgbench-run.out" 2>&1
q "SELECT pg_switch_wal()" >/dev/null
wait_archived

# --- resilience drill ---------------------------------------------------------------------------
cat >"$WORK/resilience.toml" <<EOF
[repository]
url = "$WORK/res-repo"
key_file = "$WORK/res.key"
[[source]]
name = "main"
kind = "postgres"
pgdata = "$PGDATA"
dsn = "host=127.0.0.1 port=$PORT user=postgres dbname=postgres"
schedule = "0 0 3 * * *"
rpo = "1d"
[source.drill]
scratch_dir = "$WORK/scratch"
queries = [{ name = "accounts", sql = "$CHECK_SQL", compare = "at_least" }]
EOF
chown postgres:postgres "$WORK/resilience.toml"
res_drill() {
  local r="$1" rto rpo
  step resilience drill "$r" "$RES" --json drill --config "$WORK/resilience.toml" --source main
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r['ok'] else 1)" "$STEP_OUT" \
    || { cat "$STEP_OUT" >&2; echo "the drill failed" >&2; exit 1; }
  rto=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rto_seconds'])" "$STEP_OUT")
  rpo=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rpo_seconds'])" "$STEP_OUT")
  RES_RPO+="${RES_RPO:+, }$rpo"
  record resilience rto "$r" "$rto" "$STEP_RSS" "$STEP_LOAD"
  echo "  round $r resilience: RTO ${rto}s, RPO ${rpo}s" >&2
}

RES_RPO=""

# --- the same by hand with pgBackRest --------------------------------------------------------------
# restore (recovering to the end of the archive), start on a free port without archiving,
# wait for promotion, run the check query, stop: one timed script.
PGBR_PORT=$((PORT + 1))
cat >"$WORK/pgbr-drill.sh" <<EOF
set -euo pipefail
install -d -m 0700 "$WORK/pgbr-restore"
${PGBR[*]} --pg1-path="$WORK/pgbr-restore" restore --type=default
cat >>"$WORK/pgbr-restore/postgresql.auto.conf" <<CONF
port = $PGBR_PORT
archive_mode = off
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
CONF
$PGBIN/pg_ctl -D "$WORK/pgbr-restore" -l "$WORK/pgbr-restore.log" -W start >/dev/null
until [ "\$($PGBIN/psql -X -qAt -h 127.0.0.1 -p $PGBR_PORT -U postgres -d postgres -c 'select pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.2; done
$PGBIN/psql -X -qAt -h 127.0.0.1 -p $PGBR_PORT -U postgres -d postgres -c "$CHECK_SQL"
EOF
chown postgres:postgres "$WORK/pgbr-drill.sh"
pgbr_drill() {
  local r="$1" count
  rm -rf "$WORK/pgbr-restore" "$WORK/pgbr-restore.log"
  step pgBackRest drill "$r" bash "$WORK/pgbr-drill.sh"
  count=$(tail -n1 "$STEP_OUT")
  [ "$count" -ge "$FIGURE" ] || { echo "pgBackRest copy holds $count rows, expected $FIGURE" >&2; exit 1; }
  pg "$PGBIN/pg_ctl" -D "$WORK/pgbr-restore" -m immediate -w stop >/dev/null
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r of $ROUNDS" >&2
  if [ $((r % 2)) -eq 1 ]; then res_drill "$r"; pgbr_drill "$r"; else pgbr_drill "$r"; res_drill "$r"; fi
done

# --- report --------------------------------------------------------------------------------------
OUT=$(results_file drill-compare)
{
  echo "# Drill RTO: resilience drill vs the same restore by hand with pgBackRest ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "pgbench scale $SCALE (database $(python3 -c "print(f'{$DB_BYTES/1e6:.1f}')") MB), then $TXNS pgbench transactions"
  echo "archived after both backups; warm page cache; $("$PGBIN/postgres" --version), $(pgbackrest version), $("$RES" --version)."
  echo "Both: restore into a new directory, start on a new loopback port without archiving, recover to the"
  echo "end of the archived WAL, promote, run \`$CHECK_SQL\`, then stop."
  echo
  report_table pgBackRest resilience \
    "restore + recover + check: pgBackRest by hand vs the RTO the drill reports (start to checked copy)=drill:rto" \
    "whole command (the drill's incl. catalog record and tear-down)=drill:drill"
  echo
  echo "resilience drill RPO by round (it grows with the time since the last archived WAL): $RES_RPO s. Backups (one each, before the rounds):" \
       "resilience $RES_BACKUP s, pgBackRest $PGBR_BACKUP s."
  echo
  report_footer SCALE TXNS ROUNDS
} | tee "$OUT"
