#!/usr/bin/env bash
# Starts a throw-away single-node Garage S3 server on free loopback ports.
#
#   scripts/garage.sh start DIR [REGION]   start one under DIR; writes DIR/env (shell variables:
#                                          AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#                                          AWS_REGION, RESILIENCE_TEST_S3_BUCKET) and DIR/garage.pid
#   scripts/garage.sh stop DIR             stop it
#   GARAGE_KEY_ID=GK… GARAGE_KEY_SECRET=… scripts/garage.sh start DIR REGION
#                                          import those credentials instead of creating new ones
#
# Several can run at once (e.g. two "regions"), each in its own DIR.
set -euo pipefail

die() { echo "garage.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local dir="$1" region="${2:-garage}"
  command -v garage >/dev/null || die "garage is not installed (cargo install garage --locked)"
  mkdir -p "$dir/meta" "$dir/data"
  dir="$(cd "$dir" && pwd)"
  local rpc s3 admin secret token
  rpc="$(free_port)"; s3="$(free_port)"; admin="$(free_port)"
  secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  token="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$secret"

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
admin_token = "$token"
TOML
  chmod 600 "$dir/garage.toml"
  local g=(garage -c "$dir/garage.toml")
  nohup "${g[@]}" server > "$dir/garage.log" 2>&1 &
  echo $! > "$dir/garage.pid"
  local node=""
  for _ in $(seq 1 100); do
    if node="$("${g[@]}" node id -q 2>/dev/null)"; then break; fi
    kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null || { cat "$dir/garage.log" >&2; die "garage server exited"; }
    sleep 0.2
  done
  [ -n "$node" ] || { cat "$dir/garage.log" >&2; die "garage did not answer"; }
  # `node id` reads local state; wait until the server answers RPC before changing the layout.
  local up=""
  for _ in $(seq 1 150); do
    if "${g[@]}" status >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null || { cat "$dir/garage.log" >&2; die "garage server exited"; }
    sleep 0.2
  done
  [ -n "$up" ] || { cat "$dir/garage.log" >&2; die "garage RPC did not come up"; }
  retry() { local i; for i in $(seq 1 25); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; "$@"; }
  retry "${g[@]}" layout assign -z dc1 -c 1G "${node%%@*}"
  retry "${g[@]}" layout apply --version 1
  local keyinfo key_id key_secret bucket="resilience-test"
  if [ -n "${GARAGE_KEY_ID:-}" ] && [ -n "${GARAGE_KEY_SECRET:-}" ]; then
    # The same credentials as another server (two "regions" one client can reach).
    retry "${g[@]}" key import --yes -n test-key "$GARAGE_KEY_ID" "$GARAGE_KEY_SECRET"
    key_id="$GARAGE_KEY_ID"; key_secret="$GARAGE_KEY_SECRET"
  else
    for _ in $(seq 1 50); do
      if keyinfo="$("${g[@]}" key create test-key 2>&1)"; then break; fi
      sleep 0.2
    done
    key_id="$(echo "$keyinfo" | awk '/Key ID:/ {print $3}')"
    key_secret="$(echo "$keyinfo" | awk '/Secret key:/ {print $3}')"
  fi
  [ -n "$key_id" ] && [ -n "$key_secret" ] || die "could not create a key: $keyinfo"
  retry "${g[@]}" bucket create "$bucket"
  retry "${g[@]}" bucket allow --read --write --owner "$bucket" --key test-key
  cat > "$dir/env" <<ENV
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3
export AWS_ACCESS_KEY_ID=$key_id
export AWS_SECRET_ACCESS_KEY=$key_secret
export AWS_REGION=$region
export RESILIENCE_TEST_S3_BUCKET=$bucket
ENV
  echo "garage ($region) on 127.0.0.1:$s3, env in $dir/env"
}

stop() {
  local dir="$1"
  [ -f "$dir/garage.pid" ] || return 0
  kill "$(cat "$dir/garage.pid")" 2>/dev/null || true
  rm -f "$dir/garage.pid"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: garage.sh start DIR [REGION] | stop DIR" ;;
esac
