"""Test double: a loopback stand-in for the Replicate HTTP API, as the `replicate` client calls it.

  POST   /v1/files                              multipart upload (field `content`), answers a File with urls.get
  DELETE /v1/files/<id>                         204
  POST   /v1/models/<owner>/<name>/predictions  a prediction, "starting"
  POST   /v1/predictions                        the same with {"version": ...}
  GET    /v1/predictions/<id>                   "processing" until `latency` has passed, then "succeeded"
  POST   /v1/predictions/<id>/cancel
The output is a list of string chunks, like google/gemini-2.5-flash's iterator output. Faults can be queued per
operation (upload, create, get, delete) or drawn at random rates on `create`; errors are problem+json.

Held to Replicate's published OpenAPI document (tests/contracts/replicate-openapi.json): every request (its
JSON body or multipart form, its Prefer/Cancel-After headers, its bearer token) and every answer is validated;
an invalid request is answered 422, each violation is recorded, and leaving the `with` block with any raises.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from email.parser import BytesParser
from email.policy import HTTP

from contracts.openapi import replicate as replicate_contract

from fakes.fake_gemini import Faults, LoopbackServer, Reply, default_reply

TERMINAL = ("succeeded", "failed", "canceled")
API = "/v1"  # the document's server is https://api.replicate.com/v1; its paths start after it


def problem(status: int, title: str, detail: str):
    return status, {"Content-Type": "application/problem+json"}, json.dumps(
        {"title": title, "detail": detail, "status": status}).encode()


def _now(offset_s: float = 0.0) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset_s))


class FakeReplicate(LoopbackServer):
    """The fake Replicate API. `reply(prompt, media_bytes)` makes each caption; `fail_with` fails predictions."""

    def __init__(self, api_token: str = "r8_test-token", anchor: str = "annika", reply: Reply | None = None,
                 latency: float = 0.0, faults: Faults | None = None, fail_with: str | None = None):
        super().__init__()
        self.api_token, self.latency, self.fail_with = api_token, latency, fail_with
        self.reply = reply or default_reply(anchor)
        self.faults = faults or Faults()
        # What a request with another token gets: (status, title, detail in which {key} is the token received).
        self.refusal = (401, "Unauthenticated", "You did not pass a valid token")
        self.files: dict[str, bytes] = {}
        self.deleted: list[str] = []
        self.predictions: dict[str, dict] = {}
        self.created: list[dict] = []  # the body of every prediction created
        self.contract_violations: list[str] = []
        self._ids = itertools.count(1)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self.contract_violations and exc[0] is None:
            raise AssertionError("Replicate contract violations:\n" + "\n".join(self.contract_violations))

    def handle(self, method, path, handler):
        contract, api_path = replicate_contract(), path.removeprefix(API)
        if not path.startswith(API + "/") or contract.operation(method, api_path) is None:
            self.contract_violations.append(f"{method} {path} is not an operation of the document")
            return problem(404, "Not found", f"no route for {method} {path}")
        media = handler.headers.get("Content-Type", "")
        sent = self._form(handler) if media.startswith("multipart/") else json.loads(handler.body) \
            if handler.body else None
        wrong = contract.sent_problems(method, api_path, handler, sent)
        if wrong:
            self.contract_violations += wrong
            return problem(422, "Invalid request", "; ".join(wrong))
        status, headers, body = self._answer(method, path, handler)
        self.contract_violations += contract.answer_problems(method, api_path, status, headers, body)
        return status, headers, body

    def _answer(self, method, path, handler):
        if handler.headers.get("Authorization") != f"Bearer {self.api_token}":
            status, title, detail = self.refusal
            return problem(status, title, detail.format(key=handler.headers.get("Authorization", "")[7:]))
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
                    code, headers, body = problem(status, "injected", f"injected {status}")
                    return code, {**headers, **({"Retry-After": retry_after} if retry_after is not None else {})}, body
                return action(handler, *match.groups())
        raise AssertionError(f"the document has {method} {path} and the fake no route for it")

    @staticmethod
    def _parts(handler) -> dict:
        raw = b"Content-Type: " + handler.headers["Content-Type"].encode() + b"\r\n\r\n" + handler.body
        return {p.get_param("name", header="content-disposition"): p
                for p in BytesParser(policy=HTTP).parsebytes(raw).iter_parts()}

    def _form(self, handler) -> dict:
        return {name: part.get_payload(decode=True) for name, part in self._parts(handler).items()}

    def _upload(self, handler):
        parts = self._parts(handler)
        content = parts["content"]
        metadata = json.loads(parts["metadata"].get_payload(decode=True)) if "metadata" in parts else {}
        file_id = f"file{next(self._ids)}"
        with self.lock:
            self.files[file_id] = data = content.get_payload(decode=True)
        return 201, {}, {"id": file_id, "name": content.get_filename(), "content_type": content.get_content_type(),
                         "size": len(data), "etag": file_id, "checksums": {"sha256": hashlib.sha256(data).hexdigest()},
                         "metadata": metadata, "created_at": _now(), "expires_at": _now(24 * 3600),
                         "urls": {"get": f"{self.base_url}/v1/files/{file_id}"}}

    def _delete(self, handler, file_id):
        with self.lock:
            if self.files.pop(file_id, None) is None:
                return problem(404, "Not found", "File not found")
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
            return problem(422, "Invalid input", f"no uploaded file behind {missing}")
        prediction_id = f"p{next(self._ids)}"
        media = self.files[urls[0].rsplit("/", 1)[-1]]
        # As the document's example: started_at and completed_at appear once the prediction has them.
        prediction = {"id": prediction_id, "model": model, "version": version, "status": "starting",
                      "input": body["input"], "output": None, "logs": "", "error": None, "source": "api",
                      "data_removed": False, "created_at": _now(),
                      "urls": {"web": f"https://replicate.com/p/{prediction_id}",
                               "get": f"{self.base_url}/v1/predictions/{prediction_id}",
                               "cancel": f"{self.base_url}/v1/predictions/{prediction_id}/cancel"}}
        with self.lock:
            self.predictions[prediction_id] = {"json": prediction, "done_at": time.monotonic() + self.latency,
                                               "text": self.reply(body["input"].get("prompt", ""), media)}
            self.created.append(body)
        return 201, {}, prediction

    def _get(self, handler, prediction_id):
        entry = self.predictions.get(prediction_id)
        if entry is None:
            return problem(404, "Not found", "no such prediction")
        prediction = entry["json"]
        if prediction["status"] not in TERMINAL:
            prediction.setdefault("started_at", _now())
            if time.monotonic() < entry["done_at"]:
                prediction["status"] = "processing"
            elif self.fail_with:
                self._end(prediction, status="failed", error=self.fail_with)
            else:
                words = entry["text"].split(" ")  # streamed-token shape: the client must join the chunks
                self._end(prediction, status="succeeded", output=[w + " " for w in words[:-1]] + words[-1:])
        return 200, {}, prediction

    @staticmethod
    def _end(prediction: dict, **fields) -> None:
        prediction.update(completed_at=_now(), metrics={"predict_time": 0.01, "total_time": 0.02}, **fields)

    def _cancel(self, handler, prediction_id):
        entry = self.predictions.get(prediction_id)
        if entry is None:
            return problem(404, "Not found", "no such prediction")
        if entry["json"]["status"] not in TERMINAL:
            self._end(entry["json"], status="canceled")
        return 200, {}, entry["json"]

    def succeeded(self) -> int:
        with self.lock:
            return sum(1 for e in self.predictions.values() if e["json"]["status"] == "succeeded")
