#!/usr/bin/env bash
# Failover RTO and RPO with a warm standby, next to the restore-from-backup drill, at pgbench
# scale 50 with a write load running.
#
#   benches/failover.sh                       # pgbench scale 50 (~750 MB); SCALE=5 for a quick run
#   SCALE=50 LOAD=40 PORT=55533 WORK=/tmp/failover-work benches/failover.sh
#
# Region A: a primary archiving into repository A (archive_timeout 10 s). Region B: repository B,
# kept by `replicate --follow --interval 1s`, and a standby fed from it (`pg standby`). A pgbench
# write load runs (2 clients), with a ticker committing a timestamped row every 100 ms. After
# $LOAD seconds region A is lost: the follower is killed (A's store is gone), the primary stopped
# with -m immediate. Then `resilience failover --to b` (fence, promote, check) and, for
# comparison, the restore-from-backup path (`pg restore --start` of the newest base backup from
# repository B, recovering to the end of its WAL). RPO: the kill time minus the newest ticker row
# the promoted standby holds. Runs as root; Postgres and resilience run as the postgres user.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCALE="${SCALE:-50}"
LOAD="${LOAD:-40}"
PORT="${PORT:-55533}"
WORK="${WORK:-/tmp/failover-work}"
PGBIN="${PGBIN:-/usr/lib/postgresql/15/bin}"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
LOG="$WORK/log"

[ "$(id -u)" = 0 ] || { echo "run as root (commands switch to the postgres user)" >&2; exit 1; }
case "$WORK" in /|/tmp|/tmp/|"") echo "refusing WORK=$WORK" >&2; exit 1;; esac
command -v /usr/bin/time >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null; }

PGU=(setpriv --reuid=postgres --regid=postgres --init-groups -- env HOME="$WORK")
pg() { "${PGU[@]}" "$@"; }
q() { pg "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"; }

cd "$ROOT"
if [ -z "${RES_BIN:-}" ]; then
  cargo build --release -p resilience-cli >&2
  RES_BIN="$TARGET/release/resilience"
fi

for d in primary standby restored; do
  [ -f "$WORK/$d/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$WORK/$d" -m immediate stop >/dev/null 2>&1 || true
done
rm -rf "$WORK"
mkdir -p "$WORK/bin" "$LOG"
install -m 0755 "$RES_BIN" "$WORK/bin/resilience"
RES="$WORK/bin/resilience"
KEY=(--key-file "$WORK/res.key")
chown -R postgres:postgres "$WORK"
cd "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for d in primary standby restored; do
    [ -f "$WORK/$d/postmaster.pid" ] && pg "$PGBIN/pg_ctl" -D "$WORK/$d" -m immediate -w stop >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }

# --- region A: the primary, archiving into repository A --------------------------------------------
pg "$RES" --repo "$WORK/repo-a" "${KEY[@]}" init >"$LOG/init.out"
pg "$PGBIN/initdb" -D "$WORK/primary" -U postgres -A trust >"$LOG/initdb.out"
cat >>"$WORK/primary/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
wal_level = replica
archive_mode = on
archive_timeout = 10s
archive_command = '$RES --repo $WORK/repo-a ${KEY[*]} wal-push --source main %p'
max_wal_size = 4GB
checkpoint_timeout = 30min
EOF
pg "$PGBIN/pg_ctl" -D "$WORK/primary" -l "$WORK/primary.log" -w start >/dev/null
echo "pgbench -i -s $SCALE" >&2
pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$LOG/pgbench-init.out" 2>&1
q "$PORT" "CREATE TABLE ticks (id bigserial PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp())"
q "$PORT" "CHECKPOINT" >/dev/null
DB_BYTES=$(q "$PORT" "SELECT pg_database_size('postgres')")
echo "base backup into A" >&2
pg "$RES" --repo "$WORK/repo-a" "${KEY[@]}" --json pg backup --source main --pgdata "$WORK/primary" \
  --dsn "host=127.0.0.1 port=$PORT user=postgres dbname=postgres" >"$LOG/backup.json"

# --- region B: the follower and the standby ----------------------------------------------------------
pg "$RES" --repo "$WORK/repo-a" "${KEY[@]}" replicate --to "$WORK/repo-b" --follow --interval 1s \
  >"$LOG/follow.out" 2>"$LOG/follow.err" &
FOLLOWER=$!; PIDS+=("$FOLLOWER")
until [ -f "$WORK/repo-b/config" ] && pg "$RES" --repo "$WORK/repo-b" "${KEY[@]}" --json snapshots 2>/dev/null | grep -q '"succeeded"'; do sleep 0.5; done
STANDBY_PORT=$((PORT + 1))
echo "pg standby in B" >&2
/usr/bin/time -f "%e" -o "$LOG/standby.secs" "${PGU[@]}" "$RES" --repo "$WORK/repo-b" "${KEY[@]}" --json \
  pg standby --source main --pgdata "$WORK/standby" --port "$STANDBY_PORT" --timeout 1200 >"$LOG/standby.json"

# --- the load, and the standby's replay lag while it runs -----------------------------------------------
echo "write load for $LOAD s" >&2
pg "$PGBIN/pgbench" -n -c 2 -T "$LOAD" -h 127.0.0.1 -p "$PORT" -U postgres postgres >"$LOG/pgbench-run.out" 2>&1 &
PIDS+=("$!")
( while true; do q "$PORT" "INSERT INTO ticks DEFAULT VALUES" >/dev/null 2>&1 || exit 0; sleep 0.1; done ) &
TICKER=$!; PIDS+=("$TICKER")
: >"$LOG/lag.txt"
END=$(( $(date +%s) + LOAD ))
while [ "$(date +%s)" -lt "$END" ]; do
  lag=$(q "$STANDBY_PORT" "SELECT coalesce(extract(epoch FROM clock_timestamp() - max(at)), -1) FROM ticks" 2>/dev/null || echo -1)
  echo "$lag" >>"$LOG/lag.txt"
  sleep 1
done

# --- region A is lost ---------------------------------------------------------------------------------
kill -9 "$FOLLOWER" 2>/dev/null || true
kill "$TICKER" 2>/dev/null || true
LOST_AT=$(now)
pg "$PGBIN/pg_ctl" -D "$WORK/primary" -m immediate -w stop >/dev/null
cat >"$WORK/regions.toml" <<EOF
[repository]
url = "$WORK/repo-a"
key_file = "$WORK/res.key"
[[region]]
name = "a"
repository = "$WORK/repo-a"
[region.postgres]
pgdata = "$WORK/primary"
port = $PORT
dsn = "host=127.0.0.1 port=$PORT user=postgres dbname=postgres connect_timeout=3"
[[region]]
name = "b"
repository = "$WORK/repo-b"
[region.postgres]
pgdata = "$WORK/standby"
port = $STANDBY_PORT
source = "main"
checks = [{ name = "branches", sql = "select count(*) from pgbench_branches" }]
EOF
chown postgres:postgres "$WORK/regions.toml"
echo "failover --to b" >&2
/usr/bin/time -f "%e" -o "$LOG/failover.secs" "${PGU[@]}" "$RES" --json failover --config "$WORK/regions.toml" --to b >"$LOG/failover.json"
NEWEST=$(q "$STANDBY_PORT" "SELECT extract(epoch FROM max(at)) FROM ticks")

# --- the restore-from-backup path, from the same repository ------------------------------------------------
RESTORE_PORT=$((PORT + 2))
echo "pg restore from B (restore-from-backup)" >&2
/usr/bin/time -f "%e" -o "$LOG/restore.secs" "${PGU[@]}" "$RES" --repo "$WORK/repo-b" "${KEY[@]}" --json \
  pg restore --source main --pgdata "$WORK/restored" --port "$RESTORE_PORT" --start --no-archive --timeout 1200 >"$LOG/restore.json"
q "$RESTORE_PORT" "select count(*) from pgbench_accounts" >/dev/null

# --- report ----------------------------------------------------------------------------------------------
read -r FO_RTO FO_OK < <(python3 -c "import json; r=json.load(open('$LOG/failover.json')); print(r['rto_seconds'], r['ok'])")
[ "$FO_OK" = True ] || { cat "$LOG/failover.json" >&2; echo "the failover failed" >&2; exit 1; }
FO_WALL=$(cat "$LOG/failover.secs")
RESTORE_WALL=$(cat "$LOG/restore.secs")
RESTORE_RECOVERY=$(python3 -c "import json; r=json.load(open('$LOG/restore.json')); print(round(r['restore_ms']/1000 + r['reached']['recovery_seconds'], 3))")
RPO=$(python3 -c "print(round($LOST_AT - $NEWEST, 3))")
LAGS=$(python3 -c "
v=[float(x) for x in open('$LOG/lag.txt') if float(x) >= 0]
v.sort()
print(f'median {v[len(v)//2]:.1f} s, max {v[-1]:.1f} s over {len(v)} samples' if v else 'no samples')")
OUT="$ROOT/benches/results/failover-$(date +%Y%m%d-%H%M).md"
mkdir -p "$(dirname "$OUT")"
{
  echo "# Failover with a warm standby vs restore from backup ($(date -u '+%Y-%m-%d %H:%M UTC'))"
  echo
  echo "pgbench scale $SCALE (database $(python3 -c "print(f'{$DB_BYTES/1e6:.1f}')") MB); $LOAD s of pgbench (2 clients) and a"
  echo "ticker row every 100 ms; archive_timeout 10 s; \`replicate --follow --interval 1s\` from A to B;"
  echo "repositories on the local disk; $(nproc) cores; $("$PGBIN/postgres" --version), $("$RES" --version)."
  echo
  echo "| | seconds |"
  echo "| --- | ---: |"
  echo "| failover RTO (\`failover --to b\`: fence, promote, check; its own figure) | $FO_RTO |"
  echo "| failover, whole command | $FO_WALL |"
  echo "| restore from backup (\`pg restore --start\`, restore + recovery to the end of the WAL) | $RESTORE_RECOVERY |"
  echo "| restore from backup, whole command | $RESTORE_WALL |"
  echo "| RPO: region lost minus the newest row the promoted standby holds | $RPO |"
  echo
  echo "RTO ratio, restore from backup / failover: $(python3 -c "print(f'{$RESTORE_WALL/$FO_WALL:.1f}')")x (whole commands)."
  echo "Standby replay lag during the load (now minus the newest ticker row it holds): $LAGS."
  echo "Standby made in $(cat "$LOG/standby.secs") s (restore of the base backup and start)."
  echo
  echo "Exact command: \`SCALE=$SCALE LOAD=$LOAD benches/failover.sh\`"
} | tee "$OUT"
