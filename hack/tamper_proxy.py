#!/usr/bin/env python3
"""Loopback HTTP proxy in front of a test registry (stdlib only).

  tamper_proxy.py [--port 0] [--upstream 127.0.0.1:5000] [--log FILE]
                  [--corrupt-blob sha256:...]... [--corrupt-all-blobs]
                  [--stall-blob sha256:...]... [--stall-all-blobs] [--stall-after N]

* pass-through by default; every request is appended to --log as one JSON line
  {"method","path","status","bytes","action"} (used to count blob GETs).
* --corrupt-blob D: GET of blob D is served with one byte flipped (the middle byte),
  same length, so the client only notices through digest verification.
* --stall-blob D: GET of blob D sends the headers and the first --stall-after bytes
  (default 1024), then hangs (up to 1h) until the client goes away.
* prints "listening on PORT" (the real port when --port 0) on stdout, then serves.
Only ever talks to --upstream, which must be on loopback.
"""
import argparse
import http.client
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
       "transfer-encoding", "upgrade"}
BLOB_RE = re.compile(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$")


class Cfg:
    upstream = ("127.0.0.1", 5000)
    corrupt = set()
    corrupt_all = False
    stall = set()
    stall_all = False
    stall_after = 1024
    log = None
    lock = threading.Lock()


def log_req(entry):
    if not Cfg.log:
        return
    with Cfg.lock:
        with open(Cfg.log, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def _proxy(self):
        path = self.path
        m = BLOB_RE.match(path.split("?")[0])
        digest = m.group(1) if m else None
        action = "pass"
        if digest and self.command == "GET":
            if Cfg.corrupt_all or digest in Cfg.corrupt:
                action = "corrupt"
            elif Cfg.stall_all or digest in Cfg.stall:
                action = "stall"
        n = int(self.headers.get("Content-Length", "0") or 0)
        body = self.rfile.read(n) if n else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP and k.lower() != "host"}
        headers["Host"] = "%s:%d" % Cfg.upstream
        try:
            conn = http.client.HTTPConnection(*Cfg.upstream, timeout=60)
            conn.request(self.command, path, body=body, headers=headers)
            resp = conn.getresponse()
        except Exception as e:  # upstream down
            self.send_error(502, "upstream: %s" % e)
            log_req({"method": self.command, "path": path, "status": 502, "bytes": 0, "action": action})
            return
        data_len = resp.getheader("Content-Length")
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in HOP:
                continue
            self.send_header(k, v)
        chunked = data_len is None and self.command != "HEAD" and resp.status not in (204, 304)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sent = 0
        if self.command == "HEAD":
            resp.read()
        elif action == "corrupt" and resp.status == 200:
            data = bytearray(resp.read())
            if data:
                data[len(data) // 2] ^= 0xFF
            sent = self._write(bytes(data), chunked)
        else:
            while True:
                chunk = resp.read(64 * 1024)
                if not chunk:
                    break
                if action == "stall" and resp.status == 200 and sent + len(chunk) >= Cfg.stall_after:
                    head = chunk[: max(0, Cfg.stall_after - sent)]
                    sent += self._write(head, chunked)
                    log_req({"method": self.command, "path": path, "status": resp.status, "bytes": sent,
                             "action": "stalled"})
                    self._hang()
                    conn.close()
                    self.close_connection = True
                    return
                sent += self._write(chunk, chunked)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        conn.close()
        self.wfile.flush()
        log_req({"method": self.command, "path": path, "status": resp.status, "bytes": sent, "action": action,
                 "range": self.headers.get("Range")})

    def _write(self, data, chunked):
        if not data:
            return 0
        if chunked:
            self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        else:
            self.wfile.write(data)
        self.wfile.flush()
        return len(data)

    def _hang(self):
        deadline = time.time() + 3600
        self.connection.settimeout(1.0)
        while time.time() < deadline:
            try:
                if self.connection.recv(1, 0x40 | 0x2) == b"":  # MSG_DONTWAIT|MSG_PEEK: EOF -> client gone
                    return
            except (BlockingIOError, TimeoutError):
                pass  # no data and no EOF: client still waiting
            except OSError:
                return
            time.sleep(0.5)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _proxy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--upstream", default="127.0.0.1:5000")
    ap.add_argument("--log")
    ap.add_argument("--corrupt-blob", action="append", default=[])
    ap.add_argument("--corrupt-all-blobs", action="store_true")
    ap.add_argument("--stall-blob", action="append", default=[])
    ap.add_argument("--stall-all-blobs", action="store_true")
    ap.add_argument("--stall-after", type=int, default=1024)
    a = ap.parse_args()
    host, _, port = a.upstream.rpartition(":")
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise SystemExit("upstream must be on loopback")
    Cfg.upstream = (host, int(port))
    Cfg.corrupt = set(a.corrupt_blob)
    Cfg.corrupt_all = a.corrupt_all_blobs
    Cfg.stall = set(a.stall_blob)
    Cfg.stall_all = a.stall_all_blobs
    Cfg.stall_after = a.stall_after
    Cfg.log = a.log
    srv = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    srv.daemon_threads = True
    print("listening on %d" % srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
