"""Test double: a loopback stand-in for the Replicate HTTP API, as the `replicate` client calls it.

  POST   /v1/files                              multipart upload (field `content`), answers a File with urls.get
  DELETE /v1/files/<id>                         204
  POST   /v1/models/<owner>/<name>/predictions  a prediction, "starting"
  POST   /v1/predictions                        the same with {"version": ...}
  GET    /v1/predictions/<id>                   "processing" until `latency` has passed, then "succeeded"
  POST   /v1/predictions/<id>/cancel
The output is a list of string chunks, like google/gemini-2.5-flash's iterator output. Faults can be queued per
operation (upload, create, get, delete) or drawn at random rates on `create`.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from email.parser import BytesParser
from email.policy import HTTP

from fakes.fake_gemini import Faults, LoopbackServer, Reply, default_reply

TERMINAL = ("succeeded", "failed", "canceled")


class FakeReplicate(LoopbackServer):
    """The fake Replicate API. `reply(prompt, media_bytes)` makes each caption; `fail_with` fails predictions."""

    def __init__(self, api_token: str = "r8_test-token", anchor: str = "annika", reply: Reply | None = None,
                 latency: float = 0.0, faults: Faults | None = None, fail_with: str | None = None):
        super().__init__()
        self.api_token, self.latency, self.fail_with = api_token, latency, fail_with
        self.reply = reply or default_reply(anchor)
        self.faults = faults or Faults()
        self.files: dict[str, bytes] = {}
        self.deleted: list[str] = []
        self.predictions: dict[str, dict] = {}
        self.created: list[dict] = []  # the body of every prediction created
        self._ids = itertools.count(1)

    def handle(self, method, path, handler):
        if handler.headers.get("Authorization") != f"Bearer {self.api_token}":
            return 401, {}, {"title": "Unauthenticated", "detail": "You did not pass a valid token", "status": 401}
        routes = [
            ("POST", r"^/v1/files$", "upload", self._upload),
            ("DELETE", r"^/v1/files/(\w+)$", "delete", self._delete),
            ("POST", r"^/v1/models/([\w.\-]+)/([\w.\-]+)/predictions$", "create", self._create_for_model),
            ("POST", r"^/v1/predictions$", "create", self._create_for_version),
            ("GET", r"^/v1/predictions/(\w+)$", "get", self._get),
            ("POST", r"^/v1/predictions/(\w+)/cancel$", "cancel", self._cancel),
        ]
        for route_method, pattern, op, action in routes:
            match = re.match(pattern, path)
            if method == route_method and match:
                fault = self.faults.draw(op, random_ops=("create",))
                if fault:
                    status, retry_after = fault
                    headers = {"Retry-After": retry_after} if retry_after is not None else {}
                    return status, headers, {"title": "injected", "detail": f"injected {status}", "status": status}
                return action(handler, *match.groups())
        return 404, {}, {"title": "Not found", "detail": f"no route for {method} {path}", "status": 404}

    def _upload(self, handler):
        raw = b"Content-Type: " + handler.headers["Content-Type"].encode() + b"\r\n\r\n" + handler.body
        parts = {p.get_param("name", header="content-disposition"): p
                 for p in BytesParser(policy=HTTP).parsebytes(raw).iter_parts()}
        content = parts["content"]
        file_id = f"file{next(self._ids)}"
        with self.lock:
            self.files[file_id] = content.get_payload(decode=True)
        return 201, {}, {"id": file_id, "name": content.get_filename(), "content_type": content.get_content_type(),
                         "size": len(self.files[file_id]), "etag": file_id, "checksums": {}, "metadata": {},
                         "created_at": "2026-01-01T00:00:00Z", "expires_at": None,
                         "urls": {"get": f"{self.base_url}/v1/files/{file_id}"}}

    def _delete(self, handler, file_id):
        with self.lock:
            if self.files.pop(file_id, None) is None:
                return 404, {}, {"title": "Not found", "detail": "no such file", "status": 404}
            self.deleted.append(file_id)
        return 204, {}, None

    def _create_for_model(self, handler, owner, name):
        return self._create(json.loads(handler.body), f"{owner}/{name}", "")

    def _create_for_version(self, handler):
        body = json.loads(handler.body)
        return self._create(body, "owner/model", body["version"])

    def _create(self, body, model, version):
        urls = [u for key in ("images", "videos") for u in body["input"].get(key, [])]
        missing = [u for u in urls if u.rsplit("/", 1)[-1] not in self.files]
        if missing or not urls:
            return 422, {}, {"title": "Invalid input", "detail": f"no uploaded file behind {missing}", "status": 422}
        prediction_id = f"p{next(self._ids)}"
        media = self.files[urls[0].rsplit("/", 1)[-1]]
        prediction = {"id": prediction_id, "model": model, "version": version, "status": "starting",
                      "input": body["input"], "output": None, "logs": "", "error": None, "metrics": {},
                      "created_at": "2026-01-01T00:00:00Z", "started_at": None, "completed_at": None,
                      "urls": {"get": f"{self.base_url}/v1/predictions/{prediction_id}",
                               "cancel": f"{self.base_url}/v1/predictions/{prediction_id}/cancel"}}
        with self.lock:
            self.predictions[prediction_id] = {"json": prediction, "done_at": time.monotonic() + self.latency,
                                               "text": self.reply(body["input"].get("prompt", ""), media)}
            self.created.append(body)
        return 201, {}, prediction

    def _get(self, handler, prediction_id):
        entry = self.predictions.get(prediction_id)
        if entry is None:
            return 404, {}, {"title": "Not found", "detail": "no such prediction", "status": 404}
        prediction = entry["json"]
        if prediction["status"] not in TERMINAL:
            if time.monotonic() < entry["done_at"]:
                prediction["status"] = "processing"
            elif self.fail_with:
                prediction.update(status="failed", error=self.fail_with)
            else:
                words = entry["text"].split(" ")  # streamed-token shape: the client must join the chunks
                prediction.update(status="succeeded", output=[w + " " for w in words[:-1]] + words[-1:])
        return 200, {}, prediction

    def _cancel(self, handler, prediction_id):
        entry = self.predictions[prediction_id]
        entry["json"]["status"] = "canceled"
        return 200, {}, entry["json"]

    def succeeded(self) -> int:
        with self.lock:
            return sum(1 for e in self.predictions.values() if e["json"]["status"] == "succeeded")
