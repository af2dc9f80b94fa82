#!/usr/bin/env bash
# Starts a throw-away Azurite (Azure Blob emulator) on a free loopback port, with telemetry off,
# and creates the test container.
#
#   scripts/azurite.sh start DIR   writes DIR/env (AZURE_STORAGE_USE_EMULATOR, AZURITE_BLOB_STORAGE_URL,
#                                  RESILIENCE_TEST_AZURE_CONTAINER) and DIR/azurite.pid
#   scripts/azurite.sh stop DIR
set -euo pipefail

die() { echo "azurite.sh: $*" >&2; exit 1; }

start() {
  local dir="$1"
  command -v azurite-blob >/dev/null || die "azurite is not installed (npm install -g azurite)"
  mkdir -p "$dir/data"
  dir="$(cd "$dir" && pwd)"
  local port
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  nohup azurite-blob --blobHost 127.0.0.1 --blobPort "$port" --location "$dir/data" \
    --disableTelemetry --skipApiVersionCheck --silent > "$dir/azurite.log" 2>&1 &
  echo $! > "$dir/azurite.pid"
  local up=""
  for _ in $(seq 1 100); do
    if python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 1)" 2>/dev/null; then up=1; break; fi
    kill -0 "$(cat "$dir/azurite.pid")" 2>/dev/null || { cat "$dir/azurite.log" >&2; die "azurite exited"; }
    sleep 0.1
  done
  [ -n "$up" ] || die "azurite did not listen on $port"
  # Create the container: a PUT signed with the emulator's well-known shared key.
  python3 - "$port" <<'PY' || die "cannot create the test container"
import base64, hashlib, hmac, sys, urllib.request
from email.utils import formatdate
port = sys.argv[1]
account = "devstoreaccount1"
key = base64.b64decode("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==")
container = "resilience-test"
date = formatdate(usegmt=True)
version = "2021-08-06"
to_sign = "PUT\n\n\n\n\n\n\n\n\n\n\n\n" + f"x-ms-date:{date}\nx-ms-version:{version}\n" + \
    f"/{account}/{account}/{container}\nrestype:container"
sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/{account}/{container}?restype=container", method="PUT",
    headers={"x-ms-date": date, "x-ms-version": version, "Authorization": f"SharedKey {account}:{sig}", "Content-Length": "0"})
try:
    urllib.request.urlopen(req).read()
except urllib.error.HTTPError as e:
    if e.code != 409:  # already exists
        print(e.read().decode(), file=sys.stderr)
        raise
PY
  cat > "$dir/env" <<ENV
export AZURE_STORAGE_USE_EMULATOR=true
export AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$port
export RESILIENCE_TEST_AZURE_CONTAINER=resilience-test
ENV
  echo "azurite on 127.0.0.1:$port, env in $dir/env"
}

stop() {
  local dir="$1"
  [ -f "$dir/azurite.pid" ] || return 0
  kill "$(cat "$dir/azurite.pid")" 2>/dev/null || true
  rm -f "$dir/azurite.pid"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: azurite.sh start DIR | stop DIR" ;;
esac
