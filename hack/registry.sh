#!/usr/bin/env bash
# Local test registries for berth.
#   hack/registry.sh start|stop|status|env
# Instances (all on loopback):
#   plain  http://127.0.0.1:5000                     no auth
#   tls    https://127.0.0.1:5443  (CA: $BERTH_HACK_DIR/certs/ca.crt)  htpasswd basic auth berth:berthpass
#   token  http://127.0.0.1:5001   bearer token auth, token server http://127.0.0.1:5002/token (berth:berthpass)
# State (configs, storage, certs, pid files, logs) lives in $BERTH_HACK_DIR
# (default /var/tmp/berth-hack). Idempotent: start on a running set is a no-op.
set -euo pipefail

HACK_SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${BERTH_HACK_DIR:-/var/tmp/berth-hack}"
REG_DIR="$DIR/registry"
CERTS="$DIR/certs"
USER_NAME=berth
USER_PASS=berthpass
TOKEN_SERVICE=berth-registry
TOKEN_ISSUER=berth-token-issuer

mkdir -p "$REG_DIR" "$CERTS"

log() { echo "registry: $*" >&2; }

make_certs() {
  if [ ! -s "$CERTS/ca.crt" ] || [ ! -s "$CERTS/ca.key" ]; then
    log "generating CA"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -keyout "$CERTS/ca.key" -out "$CERTS/ca.crt" \
      -subj "/CN=berth test CA" \
      -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1
    rm -f "$CERTS/server.crt"
  fi
  if [ ! -s "$CERTS/server.crt" ] || [ ! -s "$CERTS/server.key" ]; then
    log "generating server cert"
    openssl req -newkey rsa:2048 -nodes -sha256 \
      -keyout "$CERTS/server.key" -out "$CERTS/server.csr" \
      -subj "/CN=127.0.0.1" >/dev/null 2>&1
    printf '%s\n' \
      "basicConstraints=critical,CA:FALSE" \
      "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" \
      "subjectAltName=IP:127.0.0.1,DNS:localhost" > "$CERTS/server.ext"
    openssl x509 -req -in "$CERTS/server.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" \
      -CAcreateserial -days 3650 -sha256 -extfile "$CERTS/server.ext" \
      -out "$CERTS/server.crt" >/dev/null 2>&1
  fi
  if [ ! -s "$CERTS/token.crt" ] || [ ! -s "$CERTS/token.key" ]; then
    log "generating token signing key"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -sha256 \
      -keyout "$CERTS/token.key" -out "$CERTS/token.crt" \
      -subj "/CN=berth token signer" >/dev/null 2>&1
  fi
  if [ ! -s "$CERTS/htpasswd" ]; then
    htpasswd -Bbn "$USER_NAME" "$USER_PASS" > "$CERTS/htpasswd"
  fi
}

write_config() { # name addr extra-yaml
  local name=$1 addr=$2 extra=$3
  mkdir -p "$REG_DIR/$name/storage"
  cat > "$REG_DIR/$name/config.yml" <<YAML
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $REG_DIR/$name/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: $addr
  secret: berth-test-secret-$name
  headers:
    X-Content-Type-Options: [nosniff]
$extra
YAML
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

http_code() { # url [curl args...]
  local url=$1; shift
  curl -s -o /dev/null -m 2 -w '%{http_code}' "$@" "$url" 2>/dev/null || true
}

wait_v2() { # name url want-code [curl args]
  local name=$1 url=$2 want=$3; shift 3
  local i code
  for i in $(seq 1 100); do
    code=$(http_code "$url" "$@")
    if [ "$code" = "$want" ]; then return 0; fi
    sleep 0.1
  done
  log "$name did not answer $url with $want (last: ${code:-none}); log:"
  tail -n 30 "$REG_DIR/$name/log" >&2 || true
  return 1
}

start_one() { # name cmd...
  local name=$1; shift
  local pidf="$REG_DIR/$name/pid"
  mkdir -p "$REG_DIR/$name"
  if pid_alive "$pidf"; then return 0; fi
  nohup setsid "$@" >>"$REG_DIR/$name/log" 2>&1 < /dev/null &
  echo $! > "$pidf"
}

stop_one() {
  local name=$1 pidf="$REG_DIR/$1/pid"
  if pid_alive "$pidf"; then
    local pid; pid=$(cat "$pidf")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    log "stopped $name ($pid)"
  fi
  rm -f "$pidf"
}

cmd_start() {
  command -v docker-registry >/dev/null || { log "docker-registry missing: run hack/deps.sh"; exit 1; }
  make_certs
  write_config plain 127.0.0.1:5000 ""
  write_config tls 127.0.0.1:5443 "  tls:
    certificate: $CERTS/server.crt
    key: $CERTS/server.key
auth:
  htpasswd:
    realm: berth-basic
    path: $CERTS/htpasswd"
  write_config token 127.0.0.1:5001 "auth:
  token:
    realm: http://127.0.0.1:5002/token
    service: $TOKEN_SERVICE
    issuer: $TOKEN_ISSUER
    rootcertbundle: $CERTS/token.crt"

  start_one plain docker-registry serve "$REG_DIR/plain/config.yml"
  start_one tls docker-registry serve "$REG_DIR/tls/config.yml"
  start_one token docker-registry serve "$REG_DIR/token/config.yml"
  start_one tokensrv python3 "$HACK_SRC/token_server.py" --port 5002 \
    --key "$CERTS/token.key" --cert "$CERTS/token.crt" \
    --service "$TOKEN_SERVICE" --issuer "$TOKEN_ISSUER" --user "$USER_NAME" --password "$USER_PASS"

  wait_v2 plain http://127.0.0.1:5000/v2/ 200
  wait_v2 tls https://127.0.0.1:5443/v2/ 401 --cacert "$CERTS/ca.crt"
  wait_v2 tls https://127.0.0.1:5443/v2/ 200 --cacert "$CERTS/ca.crt" -u "$USER_NAME:$USER_PASS"
  wait_v2 token http://127.0.0.1:5001/v2/ 401
  wait_v2 tokensrv "http://127.0.0.1:5002/token?service=$TOKEN_SERVICE" 200 -u "$USER_NAME:$USER_PASS"
  # full token round trip
  local tok
  tok=$(curl -sf -u "$USER_NAME:$USER_PASS" "http://127.0.0.1:5002/token?service=$TOKEN_SERVICE&scope=registry:catalog:*" | jq -r .token)
  wait_v2 token http://127.0.0.1:5001/v2/ 200 -H "Authorization: Bearer $tok"
  write_env
  log "up: plain :5000, tls+basic :5443, token :5001 (token server :5002); state in $DIR"
}

write_env() {
  cat > "$DIR/registry.env" <<ENV
BERTH_REG_PLAIN=127.0.0.1:5000
BERTH_REG_TLS=127.0.0.1:5443
BERTH_REG_TOKEN=127.0.0.1:5001
BERTH_TOKEN_REALM=http://127.0.0.1:5002/token
BERTH_REG_USER=$USER_NAME
BERTH_REG_PASS=$USER_PASS
BERTH_REG_CA=$CERTS/ca.crt
ENV
}

cmd_stop() {
  for n in tokensrv token tls plain; do stop_one "$n"; done
}

cmd_status() {
  local rc=0
  for n in plain tls token tokensrv; do
    if pid_alive "$REG_DIR/$n/pid"; then echo "$n: running (pid $(cat "$REG_DIR/$n/pid"))"; else echo "$n: stopped"; rc=1; fi
  done
  echo "plain /v2/: $(http_code http://127.0.0.1:5000/v2/)"
  echo "tls   /v2/: $(http_code https://127.0.0.1:5443/v2/ --cacert "$CERTS/ca.crt" -u "$USER_NAME:$USER_PASS")"
  echo "token /v2/: $(http_code http://127.0.0.1:5001/v2/) (401 expected without token)"
  return $rc
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
