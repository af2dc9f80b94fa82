#!/usr/bin/env bash
# Redis backup and restore side by side, in one run, on one keyspace of mixed types, over ROUNDS
# rounds: resilience (SCAN + pipelined DUMP/PEXPIRETIME into the encrypted, deduplicated
# repository, then RESTORE ABSTTL), `redis-cli --rdb` (snapshot, backup only) and a plain
# pipelined DUMP/RESTORE loop (benches/src/bin/redis-dump-loop.rs: no compression, encryption
# or catalog). The issue's targets: backup at least 1.5× `redis-cli --rdb`'s keys/s, restore at
# least the plain RESTORE loop's.
#
#   benches/compare-redis.sh                       # 1,000,000 keys, 3 rounds
#   KEYS=200000 ROUNDS=3 MEMORY=64MiB RDB_DELAY=0 benches/compare-redis.sh
#   RESILIENCE_BIN=/path/to/resilience BENCH_BIN_DIR=/dir/with/redis-dump-loop benches/compare-redis.sh
#
# Servers on free loopback ports; everything under $WORK (default a temporary directory), removed
# at the end. Honest on a shared VM: memory touched first, `sync` before every timed step, each
# round backs up into a fresh repository and restores into a freshly started, empty server, the
# tools alternating which goes first; every restore is checked (the key count). Medians and
# [min–max], peak RSS (of the client: redis-cli's, not the server's forked child that writes the
# RDB) and the load go to benches/results/redis-compare-<time>.md with the command. The servers
# run with repl-diskless-sync-delay $RDB_DELAY (default 0): Redis 7 otherwise waits 5 s for more
# replicas before it streams the RDB to `redis-cli --rdb`, an idle wait that is no part of taking
# a snapshot (RDB_DELAY=5 for the server's default).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEYS="${KEYS:-1000000}"
ROUNDS="${ROUNDS:-3}"
MEMORY="${MEMORY:-64MiB}"
RDB_DELAY="${RDB_DELAY:-0}"   # the servers' repl-diskless-sync-delay (Redis 7's default: 5)
WORK="${WORK:-$(mktemp -d)}"
case "$WORK" in /|/tmp|/tmp/|"") echo "refusing WORK=$WORK" >&2; exit 1;; esac
mkdir -p "$WORK"
# shellcheck source=lib/bench.sh
. "$ROOT/benches/lib/bench.sh"
declare -A SERVER_PID=()
cleanup() {
  local p
  for p in "${SERVER_PID[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK" || true
}
trap cleanup EXIT

need redis-server redis-server
need /usr/bin/time time

RES=$(resilience_bin)
LOOP=$(bench_bin redis-dump-loop)

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# server VAR: starts an empty server on a free port and stores the port in VAR.
server() {
  local p; p=$(port)
  rm -rf "$WORK/srv-$p"; mkdir -p "$WORK/srv-$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --repl-diskless-sync-delay "$RDB_DELAY" --dir "$WORK/srv-$p" \
    --logfile "$WORK/redis-$p.log" </dev/null >/dev/null 2>&1 &
  SERVER_PID[$p]=$!
  until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done
  printf -v "$1" '%s' "$p"
}
# stop_server PORT: stops it and forgets its files
stop_server() {
  kill "${SERVER_PID[$1]}" 2>/dev/null || true
  wait "${SERVER_PID[$1]}" 2>/dev/null || true
  unset "SERVER_PID[$1]"
  rm -rf "$WORK/srv-$1" "$WORK/redis-$1.log"
}
# check_restored PORT WHO: the server holds every key
check_restored() {
  local got; got=$(redis-cli -p "$1" dbsize)
  [ "$got" = "$LOADED" ] || { echo "$2 restored $got of $LOADED keys" >&2; exit 1; }
}

server SRC
echo "loading $KEYS keys of mixed types into :$SRC" >&2
# 60% strings (100 B), 10% each hashes (10 fields), lists (10), sets (10), sorted sets (10); 10% with a TTL.
redis-cli -p "$SRC" eval "
local n = tonumber(ARGV[1]); local from = tonumber(ARGV[2])
for i = from, from + n - 1 do
  local k = i % 10
  if k < 6 then redis.call('SET', 'str:'..i, string.rep(string.char(65 + i % 26), 100))
  elseif k == 6 then for f = 1, 10 do redis.call('HSET', 'hash:'..i, 'f'..f, 'v'..i..f) end
  elseif k == 7 then for f = 1, 10 do redis.call('RPUSH', 'list:'..i, 'e'..i..f) end
  elseif k == 8 then for f = 1, 10 do redis.call('SADD', 'set:'..i, 'm'..i..f) end
  else for f = 1, 10 do redis.call('ZADD', 'zset:'..i, f, 'm'..i..f) end end
  if i % 10 == 3 then redis.call('PEXPIRE', 'str:'..i, 86400000) end
end" 0 "$KEYS" 0 >/dev/null
LOADED=$(redis-cli -p "$SRC" dbsize)
USED=$(redis-cli -p "$SRC" info memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r')
echo "$LOADED keys, used_memory $USED bytes" >&2

touch_memory
bench_init "$WORK"
R=(--repo "$WORK/repo" --key-file "$WORK/key" --memory "$MEMORY")
json() { python3 -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$@"; }

res_round() {
  local r="$1" t
  rm -rf "$WORK/repo" "$WORK/key"
  "$RES" init "${R[@]}" >/dev/null 2>&1
  step resilience backup "$r" "$RES" "${R[@]}" --json redis backup --url "redis://127.0.0.1:$SRC"
  STORED=$(json "$STEP_OUT" stored_bytes); DUMPED=$(json "$STEP_OUT" logical_bytes)
  step resilience unchanged "$r" "$RES" "${R[@]}" --json redis backup --url "redis://127.0.0.1:$SRC"
  STORED2=$(json "$STEP_OUT" stored_bytes)
  server t
  step resilience restore "$r" "$RES" "${R[@]}" --json redis restore latest --url "redis://127.0.0.1:$t"
  check_restored "$t" resilience
  stop_server "$t"
}

others_round() {
  local r="$1" t
  rm -f "$WORK/dump.rdb" "$WORK/keys.bin"
  step "redis-cli --rdb" backup "$r" redis-cli -p "$SRC" --rdb "$WORK/dump.rdb"
  RDB_BYTES=$(stat -c %s "$WORK/dump.rdb")
  step "plain loop" backup "$r" "$LOOP" dump "redis://127.0.0.1:$SRC" "$WORK/keys.bin"
  RAW_BYTES=$(stat -c %s "$WORK/keys.bin")
  server t
  step "plain loop" restore "$r" "$LOOP" restore "redis://127.0.0.1:$t" "$WORK/keys.bin"
  check_restored "$t" "the plain loop"
  stop_server "$t"
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r of $ROUNDS" >&2
  if [ $((r % 2)) -eq 1 ]; then res_round "$r"; others_round "$r"; else others_round "$r"; res_round "$r"; fi
done

RATE=(--rate "$LOADED" keys/s)
BACKUP_X=$(report_ratio "${RATE[@]}" "redis-cli --rdb" backup resilience backup)
RESTORE_X=$(report_ratio "${RATE[@]}" "plain loop" restore resilience restore)
verdict() { python3 -c "import sys; print('met' if float(sys.argv[1]) >= float(sys.argv[2]) else 'NOT met')" "$1" "$2"; }
mb() { python3 -c "import sys; print(f'{int(sys.argv[1]) / 1e6:.1f}')" "$1"; }
OUT=$(results_file redis-compare)
{
  echo "# Redis: $LOADED keys of mixed types (redis $(redis-server --version | awk '{print $3}' | cut -d= -f2), $("$RES" --version))"
  echo
  echo "DUMP payloads: $(mb "$DUMPED") MB; server used_memory: $(mb "$USED") MB. Stored by resilience:" \
       "$(mb "$STORED") MB (zstd, encrypted), $((STORED2 / 1000)) kB new for an unchanged keyspace; RDB" \
       "$(mb "$RDB_BYTES") MB; the plain loop's raw file $(mb "$RAW_BYTES") MB (MB = 10^6 bytes)."
  echo
  echo "**Backup: resilience / \`redis-cli --rdb\` = ${BACKUP_X}× keys/s (target ≥ 1.5×: $(verdict "$BACKUP_X" 1.5)).**"
  echo
  echo "**Restore: resilience / plain RESTORE loop = ${RESTORE_X}× keys/s (target ≥ 1×: $(verdict "$RESTORE_X" 1)).**"
  echo
  report_table "${RATE[@]}" "redis-cli --rdb" resilience "backup=backup" "backup, unchanged keyspace=-:unchanged"
  echo
  report_table "${RATE[@]}" "plain loop" resilience "backup (DUMP loop)=backup" "restore (RESTORE loop)=restore"
  echo
  echo "Servers with repl-diskless-sync-delay $RDB_DELAY (Redis 7 waits that many seconds before it streams the RDB to \`redis-cli --rdb\`; its default is 5)."
  echo
  report_footer KEYS ROUNDS MEMORY RDB_DELAY
} | tee "$OUT"
