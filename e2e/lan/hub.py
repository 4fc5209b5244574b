#!/usr/bin/env python3
"""A stand-in for the Hugging Face hub's download paths on the test LAN, and
the plain HTTP server the LAN copy is compared with.

Usage: hub.py PORT LOG REPO/FILE=PATH...

Serves each PATH at /REPO/resolve/<revision>/FILE with range requests, the
content's sha256 as its ETag (as the hub does for LFS files), and the bytes
with sendfile(2); appends "REPO/FILE RANGE" to LOG for every request.
Anything else is a 404.
"""
import hashlib
import http.server
import os
import sys

PORT, LOG = int(sys.argv[1]), sys.argv[2]
FILES = {}
for arg in sys.argv[3:]:
    name, path = arg.split("=", 1)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    FILES[name] = (path, os.path.getsize(path), h.hexdigest())


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        parts = self.path.split("?")[0].strip("/").split("/")
        # owner/repo/resolve/revision/file...
        name = "/".join(parts[:2] + parts[4:]) if len(parts) >= 5 and parts[2] == "resolve" else None
        rng = self.headers.get("range", "")
        with open(LOG, "a") as log:
            log.write(f"{name} {rng}\n")
        if name not in FILES:
            self.send_error(404)
            return
        path, size, sha = FILES[name]
        start, end = 0, size - 1
        if rng.startswith("bytes="):
            s, _, e = rng[6:].partition("-")
            start = int(s)
            end = min(int(e), size - 1) if e else size - 1
        self.send_response(206 if rng else 200)
        self.send_header("etag", f'"{sha}"')
        self.send_header("x-repo-commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("content-length", str(end - start + 1))
        if rng:
            self.send_header("content-range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        self.wfile.flush()
        with open(path, "rb") as f:
            offset, left = start, end - start + 1
            while left > 0:
                n = os.sendfile(self.connection.fileno(), f.fileno(), offset, left)
                if n == 0:
                    break
                offset += n
                left -= n

    def log_message(self, *_):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
