#!/usr/bin/env bash
# Redis backup and restore side by side, in one run, on one keyspace of mixed types:
# resilience (SCAN + pipelined DUMP/PEXPIRETIME into the encrypted, deduplicated repository,
# then RESTORE ABSTTL), `redis-cli --rdb` (snapshot time only) and a plain pipelined
# DUMP/RESTORE loop (benches/src/bin/redis-dump-loop.rs: no compression, encryption or catalog).
#
#   benches/compare-redis.sh            # 1,000,000 keys (KEYS=200000 for a quick run)
#
# Servers on free loopback ports; everything under a temporary directory, removed at the end.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEYS="${KEYS:-1000000}"
WORK="$(mktemp -d)"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK" || true; }
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }; }
need redis-server redis-server
need /usr/bin/time time

cargo build --release --locked -p resilience-cli -p resilience-benches --manifest-path "$ROOT/Cargo.toml" >&2
RES="$ROOT/target/release/resilience"
LOOP="$ROOT/target/release/redis-dump-loop"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# server VAR: starts a server on a free port and stores the port in VAR.
server() {
  local p; p=$(port)
  mkdir -p "$WORK/srv-$p"
  redis-server --port "$p" --bind 127.0.0.1 --save '' --appendonly no --dir "$WORK/srv-$p" \
    --logfile "$WORK/redis-$p.log" </dev/null >/dev/null 2>&1 &
  PIDS+=($!)
  until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done
  printf -v "$1" '%s' "$p"
}

# run LABEL CMD...: wall seconds and peak RSS (KiB)
run() {
  local label="$1"; shift
  /usr/bin/time -f "%e %M" -o "$WORK/$label.time" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err" || {
    cat "$WORK/$label.err" >&2; echo "$label failed" >&2; exit 1; }
}
secs() { cut -d' ' -f1 "$WORK/$1.time"; }
rss_mib() { echo $(( $(cut -d' ' -f2 "$WORK/$1.time") / 1024 )); }
rate() { python3 -c "print(f'{$1/$2:,.0f}')"; }

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

"$RES" init --repo "$WORK/repo" --key-file "$WORK/key" >/dev/null 2>&1
R=(--repo "$WORK/repo" --key-file "$WORK/key")

run res-backup "$RES" "${R[@]}" --json redis backup --url "redis://127.0.0.1:$SRC"
run res-backup2 "$RES" "${R[@]}" --json redis backup --url "redis://127.0.0.1:$SRC"
run rdb redis-cli -p "$SRC" --rdb "$WORK/dump.rdb"
run loop-dump "$LOOP" dump "redis://127.0.0.1:$SRC" "$WORK/keys.bin"

server T1
run res-restore "$RES" "${R[@]}" --json redis restore latest --url "redis://127.0.0.1:$T1"
server T2
run loop-restore "$LOOP" restore "redis://127.0.0.1:$T2" "$WORK/keys.bin"
[ "$(redis-cli -p "$T1" dbsize)" = "$LOADED" ] || { echo "resilience restored $(redis-cli -p "$T1" dbsize) of $LOADED keys" >&2; exit 1; }
[ "$(redis-cli -p "$T2" dbsize)" = "$LOADED" ] || { echo "the loop restored $(redis-cli -p "$T2" dbsize) of $LOADED keys" >&2; exit 1; }

STORED=$(python3 -c "import json; print(json.load(open('$WORK/res-backup.out'))['stored_bytes'])")
STORED2=$(python3 -c "import json; print(json.load(open('$WORK/res-backup2.out'))['stored_bytes'])")
DUMPED=$(python3 -c "import json; print(json.load(open('$WORK/res-backup.out'))['logical_bytes'])")
MB=$(python3 -c "print($DUMPED/1e6)")
OUT="$ROOT/benches/results/redis-compare-$(date +%Y%m%d-%H%M).md"
{
  echo "# Redis: $LOADED keys of mixed types ($(nproc) cores, redis $(redis-server --version | awk '{print $3}' | cut -d= -f2))"
  echo
  echo "DUMP payloads: $(python3 -c "print(f'{$MB:.1f}')") MB; server used_memory: $((USED / 1000000)) MB."
  echo
  echo "| step | seconds | keys/s | MB/s | peak RSS MiB | stored |"
  echo "| --- | ---: | ---: | ---: | ---: | --- |"
  echo "| resilience backup | $(secs res-backup) | $(rate "$LOADED" "$(secs res-backup)") | $(rate "$MB" "$(secs res-backup)") | $(rss_mib res-backup) | $((STORED / 1000000)) MB (zstd, encrypted) |"
  echo "| resilience backup, unchanged keyspace | $(secs res-backup2) | $(rate "$LOADED" "$(secs res-backup2)") | $(rate "$MB" "$(secs res-backup2)") | $(rss_mib res-backup2) | $((STORED2 / 1000)) kB new |"
  echo "| redis-cli --rdb (snapshot) | $(secs rdb) | $(rate "$LOADED" "$(secs rdb)") | | $(rss_mib rdb) | $(( $(stat -c %s "$WORK/dump.rdb") / 1000000 )) MB RDB |"
  echo "| plain DUMP loop | $(secs loop-dump) | $(rate "$LOADED" "$(secs loop-dump)") | $(rate "$MB" "$(secs loop-dump)") | $(rss_mib loop-dump) | $(( $(stat -c %s "$WORK/keys.bin") / 1000000 )) MB raw file |"
  echo "| resilience restore | $(secs res-restore) | $(rate "$LOADED" "$(secs res-restore)") | $(rate "$MB" "$(secs res-restore)") | $(rss_mib res-restore) | |"
  echo "| plain RESTORE loop | $(secs loop-restore) | $(rate "$LOADED" "$(secs loop-restore)") | $(rate "$MB" "$(secs loop-restore)") | $(rss_mib loop-restore) | |"
  echo
  echo "Ratios (resilience / other, time): backup vs DUMP loop $(python3 -c "print(f'{$(secs res-backup)/$(secs loop-dump):.2f}')"), backup vs redis-cli --rdb $(python3 -c "print(f'{$(secs res-backup)/$(secs rdb):.2f}')"), restore vs RESTORE loop $(python3 -c "print(f'{$(secs res-restore)/$(secs loop-restore):.2f}')")."
} | tee "$OUT"
