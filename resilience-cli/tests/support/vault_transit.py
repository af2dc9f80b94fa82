#!/usr/bin/env python3
"""A stand-in for HashiCorp Vault's transit engine, for the tests (no Vault build installs here).

It implements the contract the resilience Vault provider relies on, with Vault's JSON shapes:

  POST /v1/auth/approle/login        {"role_id", "secret_id"} -> {"auth": {"client_token", ...}}
  POST /v1/transit/encrypt/<name>    {"plaintext": base64}    -> {"data": {"ciphertext": "vault:v1:..."}}
  POST /v1/transit/decrypt/<name>    {"ciphertext"}           -> {"data": {"plaintext": base64}}

with `X-Vault-Token` checked on the transit calls and `{"errors": [...]}` bodies on failure
(400 bad input, 403 permission denied). Keys are created on first encrypt. Ciphertexts are
authenticated (HMAC-SHA256), so a ciphertext edited by hand is refused, as Vault refuses it.
GET /test/stats returns request counts.

Usage: vault_transit.py TOKEN ROLE_ID SECRET_ID  (prints the port on stdout, then serves)
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN, ROLE_ID, SECRET_ID = sys.argv[1], sys.argv[2], sys.argv[3]
KEYS = {}
TOKENS = {TOKEN}
STATS = {"login": 0, "encrypt": 0, "decrypt": 0, "denied": 0}
LOCK = threading.Lock()


def stream(key, nonce, n):
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(key + nonce + i.to_bytes(4, "little")).digest()
        i += 1
    return out[:n]


def encrypt(name, plain):
    key = KEYS.setdefault(name, os.urandom(32))
    nonce = os.urandom(16)
    ct = bytes(a ^ b for a, b in zip(plain, stream(key, nonce, len(plain))))
    tag = hmac.new(key, nonce + ct, hashlib.sha256).digest()[:16]
    return "vault:v1:" + base64.b64encode(nonce + ct + tag).decode()


def decrypt(name, text):
    key = KEYS.get(name)
    if key is None:
        raise ValueError("encryption key not found")
    if not text.startswith("vault:v1:"):
        raise ValueError("invalid ciphertext: no prefix")
    raw = base64.b64decode(text[len("vault:v1:"):])
    nonce, ct, tag = raw[:16], raw[16:-16], raw[-16:]
    if not hmac.compare_digest(tag, hmac.new(key, nonce + ct, hashlib.sha256).digest()[:16]):
        raise ValueError("cipher: message authentication failed")
    return bytes(a ^ b for a, b in zip(ct, stream(key, nonce, len(ct))))


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/test/stats":
            with LOCK:
                return self.reply(200, dict(STATS))
        self.reply(404, {"errors": []})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self.reply(400, {"errors": ["failed to parse JSON input"]})
        parts = self.path.strip("/").split("/")
        if parts[:4] == ["v1", "auth", "approle", "login"]:
            with LOCK:
                STATS["login"] += 1
            if body.get("role_id") != ROLE_ID or body.get("secret_id") != SECRET_ID:
                return self.reply(400, {"errors": ["invalid role or secret ID"]})
            token = "hvs." + os.urandom(12).hex()
            with LOCK:
                TOKENS.add(token)
            return self.reply(200, {"auth": {"client_token": token, "policies": ["default"],
                                             "lease_duration": 3600, "renewable": True}})
        if len(parts) == 4 and parts[:2] == ["v1", "transit"] and parts[2] in ("encrypt", "decrypt"):
            with LOCK:
                allowed = self.headers.get("X-Vault-Token") in TOKENS
                if not allowed:
                    STATS["denied"] += 1
            if not allowed:
                return self.reply(403, {"errors": ["permission denied"]})
            op, name = parts[2], parts[3]
            with LOCK:
                STATS[op] += 1
            try:
                if op == "encrypt":
                    plain = base64.b64decode(body["plaintext"], validate=True)
                    return self.reply(200, {"data": {"ciphertext": encrypt(name, plain), "key_version": 1}})
                plain = decrypt(name, body["ciphertext"])
                return self.reply(200, {"data": {"plaintext": base64.b64encode(plain).decode()}})
            except (KeyError, ValueError) as e:
                return self.reply(400, {"errors": [str(e)]})
        self.reply(404, {"errors": []})


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
