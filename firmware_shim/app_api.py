"""The applications' HTTP/1.1 API on <run_dir>/api.sock (standard library, non-blocking).

    GET  /v1/flags                      the flags.json document; ETag "<revision>";
                                        If-None-Match: "<revision>" -> 304
    GET  /v1/flags/<name>               {"name", "value", "revision"}; 404 if unknown
    GET  /v1/flags?after=<rev>&wait=<s> long poll: answers as soon as the revision is
                                        not <rev> (above it; or below, when the agent's
                                        state was reset), or 304 after <s> s (max 300)
    POST /v1/outcomes                   {"ok": bool, "latency_ms": n, "source": "name"}
                                        (one object, or JSON lines) -> 202
    GET  /v1/health                     the agent's health verdict and figures

Every answer closes the connection (Connection: close). Runs inside the
agent's loop through firmware_shim.unix_server, so a slow, stuck or
trickling client never delays command handling.
"""
from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

API_SOCKET = "api.sock"
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_WAIT_S = 300.0
REASONS = {200: "OK", 202: "Accepted", 304: "Not Modified", 400: "Bad Request",
           404: "Not Found", 405: "Method Not Allowed", 411: "Length Required",
           413: "Payload Too Large"}
# a source name: the characters a probe's name may have (health config)
_SOURCE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-")


class Backend(Protocol):
    def current(self) -> dict: ...
    def record(self, ok: bool, latency_ms: float | None, source: str | None) -> None: ...
    def health(self) -> dict: ...


class OutcomeError(ValueError):
    pass


def parse_outcome(obj: Any) -> tuple[bool, float | None, str | None]:
    """{"ok": bool, "latency_ms": n, "source"?: str} -> (ok, latency, source)."""
    if not isinstance(obj, dict):
        raise OutcomeError("an outcome is a JSON object {\"ok\": bool, \"latency_ms\": n}")
    ok = obj.get("ok")
    if ok is not True and ok is not False:
        raise OutcomeError("\"ok\" must be true or false")
    latency = obj.get("latency_ms")
    if latency is not None and (isinstance(latency, bool)
                                or not isinstance(latency, (int, float))
                                or not 0 <= latency < float("inf")):
        raise OutcomeError("\"latency_ms\" must be a finite number >= 0")
    source = obj.get("source")
    if source is not None and (not isinstance(source, str) or not 0 < len(source) <= 48
                               or not _SOURCE_CHARS.issuperset(source)):
        raise OutcomeError("\"source\" must be a name of 1..48 characters of "
                           "A-Z a-z 0-9 _ . : -")
    return ok, latency, source


def etag(revision: int) -> str:
    return '"%d"' % revision


class HttpConn:
    """One HTTP connection (one request, one answer)."""

    def __init__(self, backend: Backend, clock_now: float = 0.0) -> None:
        self.backend = backend
        self.buf = bytearray()
        self.out = bytearray()
        self.done = False
        self.busy = False
        self._head: tuple[str, str, dict[str, str]] | None = None
        self._want = 0
        self._wait: tuple[int, float | None] | None = None  # (after, deadline)
        self._wait_s = 0.0

    # -- unix_server protocol ------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.done or self.busy:
            return
        self.buf += data
        if self._head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._send(413, {"error": "request head over 16 KiB"})
                return
            try:
                self._head = _parse_head(bytes(self.buf[:end]).decode("latin-1"))
            except ValueError as exc:
                self._send(400, {"error": str(exc)})
                return
            del self.buf[:end + 4]
            if "transfer-encoding" in self._head[2]:
                self._send(411, {"error": "send the body with a Content-Length; a chunked "
                                          "(Transfer-Encoding) body is not read"})
                return
            try:
                self._want = int(self._head[2].get("content-length", "0"))
            except ValueError:
                self._send(400, {"error": "bad Content-Length"})
                return
            if self._want > MAX_BODY or self._want < 0:
                self._send(413, {"error": "body over 64 KiB"})
                return
        if len(self.buf) >= self._want:
            self._route(bytes(self.buf[:self._want]))

    def eof(self) -> None:
        if not self.done and not self.busy:
            self.done = True

    def tick(self, now: float) -> None:
        if self._wait is None:
            return
        after, deadline = self._wait
        if deadline is None:
            self._wait = (after, now + self._wait_s)
            return
        doc = self.backend.current()
        if doc["revision"] != after:  # lower: a reset state dir, still news
            self._wait = None
            self.busy = False
            self._send(200, doc, {"ETag": etag(doc["revision"])})
        elif now >= deadline:
            self._wait = None
            self.busy = False
            self._send(304, None, {"ETag": etag(doc["revision"])})

    # -- routes ------------------------------------------------------------
    def _route(self, body: bytes) -> None:
        assert self._head is not None
        method, target, headers = self._head
        parts = urlsplit(target)
        path = parts.path.rstrip("/") or "/"
        query = parse_qs(parts.query)
        if path == "/v1/flags":
            if method != "GET":
                return self._send(405, {"error": "GET only"}, {"Allow": "GET"})
            return self._flags(headers, query)
        if path.startswith("/v1/flags/"):
            if method != "GET":
                return self._send(405, {"error": "GET only"}, {"Allow": "GET"})
            name = unquote(path[len("/v1/flags/"):])
            doc = self.backend.current()
            if name not in doc["flags"]:
                return self._send(404, {"error": "no flag named %r" % name,
                                        "flags": sorted(doc["flags"])})
            return self._send(200, {"name": name, "value": doc["flags"][name],
                                    "revision": doc["revision"]},
                              {"ETag": etag(doc["revision"])})
        if path == "/v1/outcomes":
            if method != "POST":
                return self._send(405, {"error": "POST only"}, {"Allow": "POST"})
            return self._outcomes(body)
        if path == "/v1/health":
            if method != "GET":
                return self._send(405, {"error": "GET only"}, {"Allow": "GET"})
            return self._send(200, self.backend.health())
        return self._send(404, {"error": "unknown path %r; see /v1/flags" % path})

    def _flags(self, headers: dict[str, str], query: dict[str, list[str]]) -> None:
        doc = self.backend.current()
        tag = etag(doc["revision"])
        if "after" in query or "wait" in query:
            try:
                after = int(query.get("after", ["-1"])[0])
                wait = float(query.get("wait", ["30"])[0])
            except ValueError:
                return self._send(400, {"error": "after must be an integer, wait seconds"})
            if doc["revision"] != after:  # lower: a reset state dir, still news
                return self._send(200, doc, {"ETag": tag})
            self._wait_s = min(max(wait, 0.0), MAX_WAIT_S)
            self._wait = (after, None)  # the deadline is set at the next tick
            self.busy = True
            return None
        if _none_match(headers.get("if-none-match"), tag):
            return self._send(304, None, {"ETag": tag})
        return self._send(200, doc, {"ETag": tag})

    def _outcomes(self, body: bytes) -> None:
        try:
            text = body.decode("utf-8")
            items = []
            stripped = text.strip()
            if stripped.startswith("{") and "\n" not in stripped:
                items.append(parse_outcome(json.loads(stripped)))
            else:
                for n, line in enumerate(text.splitlines(), 1):
                    if line.strip():
                        try:
                            items.append(parse_outcome(json.loads(line)))
                        except ValueError as exc:  # the batch is refused whole
                            raise OutcomeError("line %d: %s (nothing recorded)" % (n, exc)) \
                                from None
        except (ValueError, UnicodeError) as exc:
            return self._send(400, {"error": str(exc)})
        if not items:
            return self._send(400, {"error": "no outcome in the body: send "
                                             "{\"ok\": bool, \"latency_ms\": n} or JSON lines"})
        for ok, latency, source in items:
            self.backend.record(ok, latency, source)
        return self._send(202, {"recorded": len(items)})

    def _send(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        body = b"" if obj is None else json.dumps(obj, sort_keys=True,
                                                   default=str).encode() + b"\n"
        lines = ["HTTP/1.1 %d %s" % (code, REASONS.get(code, "")),
                 "Content-Type: application/json", "Content-Length: %d" % len(body),
                 "Cache-Control: no-cache", "Connection: close"]
        for k in sorted(headers or {}):
            lines.append("%s: %s" % (k, (headers or {})[k]))
        self.out += ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        self.done = True


def _none_match(header: str | None, tag: str) -> bool:
    """If-None-Match holds the current tag (RFC 9110: a list, weak comparison, or *)."""
    if not header:
        return False
    for item in header.split(","):
        item = item.strip()
        if item == "*" or (item[2:] if item.startswith("W/") else item) == tag:
            return True
    return False


def _parse_head(text: str) -> tuple[str, str, dict[str, str]]:
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x request line: %r" % lines[0][:80])
    headers = {}
    for line in lines[1:]:
        if ":" not in line:
            raise ValueError("bad header line %r" % line[:80])
        k, v = line.split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return parts[0], parts[1], headers
