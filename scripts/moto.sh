#!/usr/bin/env bash
# Starts a throw-away moto server (S3 with versioning, KMS, RDS) on a free loopback port.
#
#   scripts/moto.sh start DIR   writes DIR/env (RESILIENCE_TEST_MOTO_ENDPOINT) and DIR/moto.pid
#   scripts/moto.sh stop DIR
#
# moto accepts any access key; the tests use the fixed pair `moto`/`moto` and region us-east-1,
# passed in URLs and environment of their own, never through the shared AWS_* variables that
# point at Garage.
set -euo pipefail

die() { echo "moto.sh: $*" >&2; exit 1; }

start() {
  local dir="$1"
  command -v moto_server >/dev/null || die "moto is not installed (pip install 'moto[server]')"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  nohup moto_server -H 127.0.0.1 -p "$port" > "$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  local up=""
  for _ in $(seq 1 200); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then up=1; break; fi
    kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null || { cat "$dir/moto.log" >&2; die "moto_server exited"; }
    sleep 0.1
  done
  [ -n "$up" ] || { cat "$dir/moto.log" >&2; die "moto_server did not answer on $port"; }
  cat > "$dir/env" <<ENV
export RESILIENCE_TEST_MOTO_ENDPOINT=http://127.0.0.1:$port
ENV
  echo "moto on 127.0.0.1:$port, env in $dir/env"
}

stop() {
  local dir="$1"
  [ -f "$dir/moto.pid" ] || return 0
  kill "$(cat "$dir/moto.pid")" 2>/dev/null || true
  rm -f "$dir/moto.pid"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: moto.sh start DIR | stop DIR" ;;
esac
