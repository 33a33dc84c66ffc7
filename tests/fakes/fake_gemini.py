"""Test double: a loopback stand-in for the Gemini API (generateContent and the Files API).

It speaks the HTTP paths and JSON shapes that google-genai sends (read from the client's source):
  POST /upload/<v>/files             resumable upload, step 1: answers with an X-Goog-Upload-URL header
  POST /upload-session/<id>          the bytes, with X-Goog-Upload-Command "upload, finalize"
  GET  /<v>/files/<id>               PROCESSING for `processing_polls` polls, then ACTIVE (or `final_state`)
  DELETE /<v>/files/<id>
  POST /<v>/models/<model>:generateContent
Faults (status codes, Retry-After) can be queued per operation or injected at random rates, and a fixed
latency can be added to generateContent. Every request is recorded, so tests can assert the exact flow.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import random
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = Callable[[str, bytes], str]  # (prompt text, media bytes) -> caption


def media_tag(data: bytes) -> str:
    """A short digest of the media bytes: fakes put it in captions so a test can tell which file was seen."""
    return hashlib.sha256(data).hexdigest()[:10]


class Faults:
    """Scripted failures per operation (`fail_next`), then random ones at fixed rates (seeded)."""

    def __init__(self, rate_429: float = 0.0, rate_500: float = 0.0, retry_after: str | None = "0", seed: int = 0):
        self.rate_429, self.rate_500, self.retry_after = rate_429, rate_500, retry_after
        self.seed, self._random = seed, random.Random(seed)
        self._queued: dict[str, deque] = defaultdict(deque)
        self._tries: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()

    def fail_next(self, op: str, status: int, retry_after: str | None = None, times: int = 1) -> None:
        with self._lock:
            self._queued[op].extend([(status, retry_after)] * times)

    def draw(self, op: str, random_ops: tuple[str, ...], key: str | None = None) -> tuple[int, str | None] | None:
        """The fault for this request, if any. With `key` (what the request is about, e.g. one file), the n-th
        request for that key always rolls the same number: which thread sends it first does not matter, so a
        seed that passes once passes every time."""
        with self._lock:
            if self._queued[op]:
                return self._queued[op].popleft()
            if op in random_ops:
                if key is None:
                    roll = self._random.random()
                else:
                    tries = self._tries[(op, key)]
                    self._tries[(op, key)] += 1
                    roll = random.Random(f"{self.seed}/{op}/{key}/{tries}").random()
                if roll < self.rate_429:
                    return 429, self.retry_after
                if roll < self.rate_429 + self.rate_500:
                    return 500, None
        return None


class RequestLimit:
    """A per-key limit of `rpm` requests a minute that the client is not told: a token bucket (GCRA) refilled
    at rpm/minute, holding one second's worth (at least one). A refused request gets 429 with Retry-After: the
    seconds until a token is free. `minute` scales time, so a benchmark can run an hour's pace in a minute.

    Google does not publish how Gemini counts a minute; a bucket is how most APIs describe theirs.
    """

    def __init__(self, rpm: float, minute: float = 60.0, clock: Callable[[], float] = time.perf_counter):
        self.interval = minute / rpm
        self.tolerance = (max(1.0, rpm / 60) - 1) * self.interval  # the burst, as time ahead of schedule
        self.clock, self.refused = clock, 0
        self._tat = 0.0  # the theoretical arrival time of the next request
        self._lock = threading.Lock()

    def admit(self) -> float | None:
        """None if the request may go; else the seconds to wait."""
        with self._lock:
            now = self.clock()
            tat = max(self._tat, now)
            if tat - now > self.tolerance:
                self.refused += 1
                return tat - self.tolerance - now
            self._tat = tat + self.interval
            return None


class RollingLimit(RequestLimit):
    """The other reading of "N requests a minute": at most `rpm` let through in any minute (a rolling window,
    no smoothing). A refused request gets 429 with Retry-After: the seconds until the oldest of them is a minute
    old. Google's example ("if your RPM limit is 20, making 21 requests within a minute will result in an
    error", ai.google.dev/gemini-api/docs/rate-limits) fits this and a bucket alike."""

    def __init__(self, rpm: float, minute: float = 60.0, clock: Callable[[], float] = time.perf_counter):
        super().__init__(rpm, minute, clock)
        self.rpm, self.minute, self._times = int(rpm), minute, deque()

    def admit(self) -> float | None:
        with self._lock:
            now = self.clock()
            while self._times and self._times[0] <= now - self.minute:
                self._times.popleft()
            if len(self._times) >= self.rpm:
                self.refused += 1
                return self._times[0] + self.minute - now
            self._times.append(now)
            return None


def _file_of(body: bytes | None) -> str:
    """What a generateContent request is about, for per-file fault draws: its uploaded file's URI, else (inline
    media) the digest of the request, which is the same on every retry for the same file and prompt."""
    match = re.search(rb'"fileUri"\s*:\s*"([^"]+)"', body or b"")
    return match[1].decode() if match else hashlib.sha256(body or b"").hexdigest()


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 whose handler calls `self.handle(handler)`; shared by both fakes."""

    def __init__(self):
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like the real APIs
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                owner._dispatch(self)

            do_POST = do_DELETE = do_GET

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # A short poll interval: shutdown() waits for it, and tests start many servers.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def _dispatch(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?")[0]
        with self.lock:
            self.requests.append((handler.command, path))
        length = int(handler.headers.get("Content-Length") or 0)
        handler.body = handler.rfile.read(length) if length else b""
        try:
            status, headers, body = self.handle(handler.command, path, handler)
        except Exception as exc:  # a bug in the fake must show up in the test, not hang the client
            status, headers, body = 599, {}, {"error": {"code": 599, "message": repr(exc)}}
        self.send(handler, status, headers, body)

    @staticmethod
    def send(handler, status: int, headers: dict, body) -> None:
        data = b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        handler.send_response(status)
        for key, value in headers.items():
            handler.send_header(key, value)
        if body is not None and not isinstance(body, bytes):
            handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, method: str, path: str, handler) -> tuple[int, dict, object]:
        raise NotImplementedError

    def count(self, method: str, pattern: str) -> int:
        with self.lock:
            return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))


def default_reply(anchor: str) -> Reply:
    def reply(prompt: str, media: bytes) -> str:
        return f"a medium shot of {anchor} turning toward the camera, straight on [{media_tag(media)}]"

    return reply


class FakeGemini(LoopbackServer):
    """The fake Gemini API. `reply(prompt, media_bytes)` makes each caption; `api_key` is what it accepts."""

    def __init__(self, api_key: str = "test-gemini-key", anchor: str = "annika", reply: Reply | None = None,
                 latency: float = 0.0, processing_polls: int = 1, final_state: str = "ACTIVE",
                 faults: Faults | None = None, limit: RequestLimit | None = None):
        super().__init__()
        self.limit = limit  # on generateContent only: the request that costs quota
        self.api_key, self.latency = api_key, latency
        # What a request with another key gets: (status, its name, a message in which {key} is the key received,
        # echoed: the worst case for leaks, so tests prove the launcher scrubs it). A 400 comes with the ErrorInfo
        # reason Google gives a key that does not exist, API_KEY_INVALID.
        self.refusal = (403, "PERMISSION_DENIED", "API key not valid: {key!r}")
        self.reply = reply or default_reply(anchor)
        self.processing_polls, self.final_state = processing_polls, final_state
        self.faults = faults or Faults()
        self.files: dict[str, dict] = {}  # file id -> {"data", "polls", "mime"}
        self.deleted: list[str] = []
        self.events: list[tuple[str, str]] = []  # ("upload"|"poll:<STATE>"|"generate"|"delete", file id or "inline")
        self.generated = 0  # successful generateContent answers
        self.answered_at: list[float] = []  # time.perf_counter() of each, for rates
        self.prompts: list[str] = []
        self._sessions: dict[str, dict] = {}
        self._ids = itertools.count(1)

    def handle(self, method, path, handler):
        # The upload session URL is itself the credential (as with Google's), so it needs no key.
        if not path.startswith("/upload-session/") and handler.headers.get("x-goog-api-key") != self.api_key:
            status, name, message = self.refusal
            code, headers, body = _error(status, name, message.format(key=handler.headers.get("x-goog-api-key")))
            if status == 400:
                body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                             "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]
            return code, headers, body
        routes = [
            ("POST", r"^/upload/[^/]+/files$", "upload", self._start_upload),
            ("POST", r"^/upload-session/(\w+)$", "upload", self._upload_bytes),
            ("GET", r"^/[^/]+/files/(\w+)$", "get", self._get_file),
            ("DELETE", r"^/[^/]+/files/(\w+)$", "delete", self._delete_file),
            ("POST", r"^/[^/]+/models/([\w.\-]+):generateContent$", "generate", self._generate),
        ]
        for route_method, pattern, op, action in routes:
            match = re.match(pattern, path)
            if method == route_method and match:
                fault = self.faults.draw(op, random_ops=("generate",), key=_file_of(handler.body))
                if not fault and op == "generate" and self.limit and (wait := self.limit.admit()) is not None:
                    fault = (429, f"{wait:.3f}")
                if fault:
                    if op == "generate":
                        time.sleep(self.latency)
                    return _fault(*fault)
                return action(handler, *match.groups())
        return _error(404, "NOT_FOUND", f"no route for {method} {path}")

    def _start_upload(self, handler):
        if handler.headers.get("X-Goog-Upload-Protocol") != "resumable":
            return _error(400, "INVALID_ARGUMENT", "expected a resumable upload")
        session = str(next(self._ids))
        meta = json.loads(handler.body or b"{}").get("file", {})
        self._sessions[session] = {"data": b"", "mime": handler.headers.get("X-Goog-Upload-Header-Content-Type"),
                                   "display": meta.get("displayName")}
        return 200, {"X-Goog-Upload-URL": f"{self.base_url}/upload-session/{session}"}, {}

    def _upload_bytes(self, handler, session_id):
        session = self._sessions[session_id]
        session["data"] += handler.body
        if "finalize" not in handler.headers.get("X-Goog-Upload-Command", ""):
            return 200, {"X-Goog-Upload-Status": "active"}, {}
        file_id = f"f{next(self._ids)}"
        with self.lock:
            self.files[file_id] = {"data": session["data"], "mime": session["mime"], "polls": 0}
            self.events.append(("upload", file_id))
        return 200, {"X-Goog-Upload-Status": "final"}, {"file": self._file_json(file_id)}

    def _file_json(self, file_id):
        entry = self.files[file_id]
        state = "PROCESSING" if entry["polls"] < self.processing_polls else self.final_state
        return {"name": f"files/{file_id}", "mimeType": entry["mime"], "sizeBytes": str(len(entry["data"])),
                "uri": f"{self.base_url}/v1beta/files/{file_id}", "state": state}

    def _get_file(self, handler, file_id):
        if file_id not in self.files:
            return _error(404, "NOT_FOUND", f"files/{file_id} not found")
        with self.lock:
            body = self._file_json(file_id)
            self.files[file_id]["polls"] += 1
            self.events.append((f"poll:{body['state']}", file_id))
        return 200, {}, body

    def _delete_file(self, handler, file_id):
        with self.lock:
            if self.files.pop(file_id, None) is None:
                return _error(404, "NOT_FOUND", f"files/{file_id} not found")
            self.deleted.append(file_id)
            self.events.append(("delete", file_id))
        return 200, {}, {}

    def _generate(self, handler, model):
        time.sleep(self.latency)
        parts = [p for c in json.loads(handler.body)["contents"] for p in c["parts"]]
        prompt = " ".join(p["text"] for p in parts if "text" in p)
        media, source = b"", "inline"
        for part in parts:
            # The client sends the inner fields as snake_case or camelCase; proto JSON accepts both.
            inline, file_data = part.get("inlineData"), part.get("fileData")
            if inline:
                media = base64.urlsafe_b64decode(inline["data"])  # what google-genai sends (_common.py)
            elif file_data:
                file_id = (file_data.get("fileUri") or file_data["file_uri"]).rsplit("/", 1)[-1]
                entry = self.files.get(file_id)
                if entry is None or entry["polls"] < self.processing_polls or self.final_state != "ACTIVE":
                    return _error(400, "FAILED_PRECONDITION", f"file {file_id} is not in an ACTIVE state")
                media, source = entry["data"], file_id
        text = self.reply(prompt, media)
        with self.lock:
            self.events.append(("generate", source))
            self.generated += 1
            self.answered_at.append(time.perf_counter())
            self.prompts.append(prompt)
        return 200, {}, {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]},
                                         "finishReason": "STOP", "index": 0}],
                         "modelVersion": model}


def _error(code: int, status: str, message: str):
    return code, {}, {"error": {"code": code, "message": message, "status": status}}


def _fault(status: int, retry_after: str | None):
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    name = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}.get(status, "INVALID_ARGUMENT")
    return status, headers, {"error": {"code": status, "message": f"injected {status}", "status": name}}
