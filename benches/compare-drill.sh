#!/usr/bin/env bash
# Drill RTO: `resilience drill` of a pgbench cluster next to the same restore done by hand with
# pgBackRest (restore, start on a new port, recover to the end of the archived WAL, promote,
# run the check query), on one cluster that archives into both tools at once.
#
#   benches/compare-drill.sh                  # pgbench scale 50 (~750 MB); SCALE=5 for a quick run
#   SCALE=50 PORT=55433 WORK=/tmp/drill-work benches/compare-drill.sh
#
# Runs as root; every Postgres-side command, pgBackRest and resilience run as the postgres OS
# user. Everything lives under $WORK (removed at the start, kept at the end); the bench cluster
# listens on 127.0.0.1:$PORT and is stopped on exit. Both tools encrypt and compress with zstd
# level 3; pgBackRest uses process-max=2. After the backups, pgbench writes $TXNS transactions
# so that both restores replay WAL past their backup.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCALE="${SCALE:-50}"
TXNS="${TXNS:-2000}"
PORT="${PORT:-55433}"
WORK="${WORK:-/tmp/drill-work}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
PGDATA="$WORK/pgdata"
LOG="$WORK/log"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
CHECK_SQL="select count(*) from pgbench_accounts"

[ "$(id -u)" = 0 ] || { echo "run as root (commands switch to the postgres user)" >&2; exit 1; }
case "$WORK" in /|/tmp|/tmp/|"") echo "refusing WORK=$WORK" >&2; exit 1;; esac

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need /usr/bin/time time
need pgbackrest pgbackrest
need python3 python3

PGU=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK")
pg() { "${PGU[@]}" "$@"; }
q() { local port="${2:-$PORT}"; pg "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "$1"; }

cd "$ROOT"
if [ -z "${RES_BIN:-}" ]; then   # RES_BIN=path: use that binary (a script check with a debug build)
  cargo build --release -p resilience-cli >&2
  RES_BIN="$TARGET/release/resilience"
fi

[ -f "$PGDATA/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
[ -f "$WORK/pgbr-restore/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$WORK/pgbr-restore" -m immediate stop >/dev/null 2>&1 || true
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$LOG" "$WORK/scratch" "$WORK/pgbr-log" "$WORK/pgbr-lock" "$WORK/pgbr-spool"
install -m 0755 "$RES_BIN" "$WORK/bin/resilience"
RES="$WORK/bin/resilience"
RESG=(--repo "$WORK/res-repo" --key-file "$WORK/res.key")
chown -R postgres:postgres "$WORK"
cd "$WORK"

cleanup() {
  for d in "$PGDATA" "$WORK/pgbr-restore"; do
    [ -f "$d/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT

# run LABEL CMD...: wall seconds into $LOG/LABEL.secs (the command runs as given)
run() {
  local label="$1"; shift
  /usr/bin/time -f "%e %M" -o "$LOG/$label.time" "$@" >"$LOG/$label.out" 2>"$LOG/$label.err" || {
    tail -n 30 "$LOG/$label.err" >&2; echo "$label failed (logs in $LOG)" >&2; exit 1; }
  read -r secs rss < "$LOG/$label.time"
  echo "$secs" > "$LOG/$label.secs"; echo "$rss" > "$LOG/$label.rss"
  echo "  $label: ${secs}s, peak RSS $((rss / 1024)) MiB" >&2
}

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
run res-backup "${PGU[@]}" "$RES" "${RESG[@]}" pg backup --source main --pgdata "$PGDATA" \
  --dsn "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" --label "drill.query.accounts=$FIGURE" --json
run pgbr-backup "${PGU[@]}" "${PGBR[@]}" backup --type=full
# WAL past both backups, archived, for both restores to replay
pg "$PGBIN/pgbench" -n -t "$TXNS" -c 2 -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$LOG/pgbench-run.out" 2>&1
q "SELECT pg_switch_wal()" >/dev/null
wait_archived
sync

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
echo "resilience drill" >&2
run res-drill "${PGU[@]}" "$RES" --json drill --config "$WORK/resilience.toml" --source main
RES_RTO=$(python3 -c "import json; print(json.load(open('$LOG/res-drill.out'))['rto_seconds'])")
RES_RPO=$(python3 -c "import json; print(json.load(open('$LOG/res-drill.out'))['rpo_seconds'])")
python3 -c "import json,sys; r=json.load(open('$LOG/res-drill.out')); sys.exit(0 if r['ok'] else 1)" \
  || { cat "$LOG/res-drill.out" >&2; echo "the drill failed" >&2; exit 1; }

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
echo "pgBackRest by hand" >&2
run pgbr-drill "${PGU[@]}" bash "$WORK/pgbr-drill.sh"
PGBR_COUNT=$(tail -n1 "$LOG/pgbr-drill.out")
[ "$PGBR_COUNT" -ge "$FIGURE" ] || { echo "pgBackRest copy holds $PGBR_COUNT rows, expected $FIGURE" >&2; exit 1; }
pg "$PGBIN/pg_ctl" -D "$WORK/pgbr-restore" -m immediate -w stop >/dev/null

# --- report --------------------------------------------------------------------------------------
s() { cat "$LOG/$1.secs"; }
OUT="$ROOT/benches/results/drill-compare-$(date +%Y%m%d-%H%M).md"
mkdir -p "$(dirname "$OUT")"
{
  echo "# Drill RTO: resilience drill vs the same restore by hand with pgBackRest ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "pgbench scale $SCALE (database $(python3 -c "print(f'{$DB_BYTES/1e6:.1f}')") MB), then $TXNS pgbench transactions"
  echo "archived after both backups; $(nproc) cores, warm page cache; $("$PGBIN/postgres" --version), $(pgbackrest version), $("$RES" --version)."
  echo "Both: restore into a new directory, start on a new loopback port without archiving, recover to the"
  echo "end of the archived WAL, promote, run \`$CHECK_SQL\`, then stop."
  echo
  echo "| | seconds |"
  echo "| --- | ---: |"
  echo "| resilience drill, RTO it reports (start to checked copy) | $RES_RTO |"
  echo "| resilience drill, whole command (incl. catalog record and tear-down) | $(s res-drill) |"
  echo "| pgBackRest by hand (restore + start + recover + query) | $(s pgbr-drill) |"
  echo
  echo "Ratio pgBackRest by hand / resilience RTO: $(python3 -c "print(f'{$(s pgbr-drill)/$RES_RTO:.2f}')")x."
  echo "resilience drill RPO: $RES_RPO s. Backups: resilience $(s res-backup) s, pgBackRest $(s pgbr-backup) s."
  echo
  echo "Exact command: \`SCALE=$SCALE TXNS=$TXNS benches/compare-drill.sh\`"
} | tee "$OUT"
