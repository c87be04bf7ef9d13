#!/usr/bin/env python3
"""Minimal Docker registry token server (distribution token auth), stdlib only.

Usage: token_server.py --port 5002 --key token.key --cert token.crt \
           [--service berth-registry] [--issuer berth-token-issuer] \
           [--user berth --password berthpass] [--log FILE]

GET /token?service=...&scope=repository:foo/bar:pull,push[&scope=...]
  * requires HTTP Basic credentials user:password, otherwise 401
  * returns {"token", "access_token", "expires_in", "issued_at"}
The JWT is RS256-signed with --key (via `openssl dgst -sha256 -sign`), and its
header carries `x5c` = [--cert DER], which docker-registry verifies against its
`rootcertbundle` (the same cert).
"""
import argparse
import base64
import datetime
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_cert_der(path: str) -> bytes:
    pem = open(path).read()
    body = pem.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return base64.b64decode("".join(body.split()))


class State:
    args = None
    cert_der_b64 = ""
    counter = 0
    lock = threading.Lock()


def sign(signing_input: bytes) -> bytes:
    p = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", State.args.key],
        input=signing_input,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        check=True,
    )
    return p.stdout


def parse_scopes(scopes):
    access = []
    for s in scopes:
        # type:name:actions ; name may contain ':' (host:port) only in rare cases
        parts = s.split(":")
        if len(parts) < 3:
            continue
        typ = parts[0]
        actions = parts[-1]
        name = ":".join(parts[1:-1])
        access.append({"type": typ, "name": name, "actions": [a for a in actions.split(",") if a]})
    return access


def make_token(sub, service, scopes):
    now = int(time.time())
    with State.lock:
        State.counter += 1
        jti = "%d-%d" % (now, State.counter)
    header = {"typ": "JWT", "alg": "RS256", "x5c": [State.cert_der_b64]}
    claims = {
        "iss": State.args.issuer,
        "sub": sub,
        "aud": service or State.args.service,
        "exp": now + 600,
        "nbf": now - 60,
        "iat": now,
        "jti": jti,
        "access": parse_scopes(scopes),
    }
    si = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
          b64url(json.dumps(claims, separators=(",", ":")).encode())).encode()
    return si.decode() + "." + b64url(sign(si))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        sys.stderr.write("%s token-server %s\n" % (datetime.datetime.utcnow().isoformat(), fmt % a))
        sys.stderr.flush()

    def _send(self, code, obj, extra=None):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _creds_ok(self):
        h = self.headers.get("Authorization", "")
        if not h.lower().startswith("basic "):
            return None
        try:
            user, _, pw = base64.b64decode(h[6:].strip()).decode().partition(":")
        except Exception:
            return None
        if user == State.args.user and pw == State.args.password:
            return user
        return None

    def _handle(self, params):
        if urllib.parse.urlparse(self.path).path != "/token":
            return self._send(404, {"errors": [{"code": "NOT_FOUND"}]})
        user = self._creds_ok()
        if user is None:
            return self._send(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad or missing credentials"}]},
                              {"WWW-Authenticate": 'Basic realm="berth-token"'})
        service = (params.get("service") or [State.args.service])[0]
        scopes = params.get("scope", [])
        expanded = []
        for s in scopes:
            expanded.extend(s.split(" "))
        tok = make_token(user, service, expanded)
        self._send(200, {"token": tok, "access_token": tok, "expires_in": 600,
                         "issued_at": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ")})

    def do_GET(self):
        self._handle(urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query))

    def do_POST(self):
        # OAuth2 form flow (grant_type=password) — treat like GET with form params.
        n = int(self.headers.get("Content-Length", "0") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(n).decode()) if n else {}
        if "username" in form and "password" in form and "Authorization" not in self.headers:
            u, p = form["username"][0], form["password"][0]
            self.headers["Authorization"] = "Basic " + base64.b64encode(("%s:%s" % (u, p)).encode()).decode()
        q = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        q.update(form)
        self._handle(q)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=5002)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--key", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--service", default="berth-registry")
    ap.add_argument("--issuer", default="berth-token-issuer")
    ap.add_argument("--user", default="berth")
    ap.add_argument("--password", default="berthpass")
    State.args = ap.parse_args()
    State.cert_der_b64 = base64.b64encode(load_cert_der(State.args.cert)).decode()
    srv = ThreadingHTTPServer((State.args.host, State.args.port), Handler)
    srv.daemon_threads = True
    sys.stderr.write("token server listening on %s:%d\n" % (State.args.host, State.args.port))
    sys.stderr.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
