#!/usr/bin/env bash
# Starts a throw-away moto server (S3 with versioning, KMS, RDS) on a free loopback port.
#
#   scripts/moto.sh start DIR      writes DIR/env (RESILIENCE_TEST_MOTO_ENDPOINT) and DIR/moto.pid
#   scripts/moto.sh start-iam DIR  a second moto that enforces IAM policies; writes DIR/env
#                                  (RESILIENCE_TEST_MOTO_IAM_ENDPOINT and the administrator's key,
#                                  RESILIENCE_TEST_MOTO_IAM_ACCESS_KEY_ID/_SECRET_ACCESS_KEY)
#   scripts/moto.sh stop DIR
#
# `start`: moto accepts any access key; the tests use the fixed pair `moto`/`moto` and region
# us-east-1, passed in URLs and environment of their own, never through the shared AWS_*
# variables that point at Garage.
#
# `start-iam`: moto with INITIAL_NO_AUTH_ACTION_COUNT=3 answers exactly three requests without
# checking them, which create an administrator (user `admin`, an inline policy allowing every
# action, an access key); every later request must be signed by a known key and allowed by its
# user's policies. It runs through scripts/moto_iam.py, which fixes moto's canonicalisation of
# percent-encoded URLs before the signature check (see there).
set -euo pipefail

die() { echo "moto.sh: $*" >&2; exit 1; }

start() {
  local dir="$1"
  command -v moto_server >/dev/null || die "moto is not installed (pip install 'moto[server]')"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local port
  launch "$dir" moto_server
  cat > "$dir/env" <<ENV
export RESILIENCE_TEST_MOTO_ENDPOINT=http://127.0.0.1:$port
ENV
  echo "moto on 127.0.0.1:$port, env in $dir/env"
}

# Runs moto_server (or `$@` instead of it) on a free port with $dir/moto.log, $dir/moto.pid;
# sets `port` once it answers.
launch() {
  local dir="$1"; shift
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  nohup "$@" -H 127.0.0.1 -p "$port" > "$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  local up=""
  for _ in $(seq 1 200); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/', timeout=1)" 2>/dev/null; then up=1; break; fi
    kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null || { cat "$dir/moto.log" >&2; die "moto_server exited"; }
    sleep 0.1
  done
  [ -n "$up" ] || { cat "$dir/moto.log" >&2; die "moto_server did not answer on $port"; }
}

# The three unauthenticated calls INITIAL_NO_AUTH_ACTION_COUNT allows: the administrator.
ADMIN_SETUP='
import boto3, json, sys
iam = boto3.client("iam", endpoint_url=sys.argv[1], aws_access_key_id="setup",
                   aws_secret_access_key="setup", region_name="us-east-1")
iam.create_user(UserName="admin")
iam.put_user_policy(UserName="admin", PolicyName="administrator", PolicyDocument=json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
key = iam.create_access_key(UserName="admin")["AccessKey"]
print(key["AccessKeyId"], key["SecretAccessKey"])
'

start_iam() {
  local dir="$1"
  command -v moto_server >/dev/null || die "moto is not installed (pip install 'moto[server]')"
  python3 -c 'import boto3' 2>/dev/null || die "boto3 is not installed (pip install boto3)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local port
  launch "$dir" env INITIAL_NO_AUTH_ACTION_COUNT=3 python3 "$(dirname "$0")/moto_iam.py"
  local admin
  admin="$(python3 -c "$ADMIN_SETUP" "http://127.0.0.1:$port")" \
    || { cat "$dir/moto.log" >&2; die "cannot create the administrator on moto (IAM) at $port"; }
  # The fourth call must be refused: IAM is enforced.
  python3 - "http://127.0.0.1:$port" <<'PY' || die "moto on $port does not enforce IAM"
import boto3, botocore, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="nobody",
                  aws_secret_access_key="nobody", region_name="us-east-1")
try:
    s3.list_buckets()
except botocore.exceptions.ClientError:
    sys.exit(0)
sys.exit(1)
PY
  cat > "$dir/env" <<ENV
export RESILIENCE_TEST_MOTO_IAM_ENDPOINT=http://127.0.0.1:$port
export RESILIENCE_TEST_MOTO_IAM_ACCESS_KEY_ID=${admin% *}
export RESILIENCE_TEST_MOTO_IAM_SECRET_ACCESS_KEY=${admin#* }
ENV
  echo "moto (IAM enforced) on 127.0.0.1:$port, env in $dir/env"
}

stop() {
  local dir="$1"
  [ -f "$dir/moto.pid" ] || return 0
  kill "$(cat "$dir/moto.pid")" 2>/dev/null || true
  rm -f "$dir/moto.pid"
}

case "${1:-}" in
  start) shift; start "$@" ;;
  start-iam) shift; start_iam "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: moto.sh start DIR | start-iam DIR | stop DIR" ;;
esac
