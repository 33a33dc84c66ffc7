"""RunPod's REST API v2 (https://api.runpod.io/v2), the calls the RunPod backend makes, over httpx.

Not the `runpod` SDK: its pod calls paste values unescaped into GraphQL queries, so a quote in an override
would break or inject into the query. Here every body is JSON-encoded by httpx. Paths and shapes follow
RunPod's OpenAPI document for v2 (github.com/runpod/docs, api-reference-v2/openapi.json):
  GET    /catalog/gpus                -> {"gpus": [{"id", "name", "memory", "price": {"secure", "community"}}]}
  GET    /network-volumes             -> {"networkVolumes": [{"id", "name", "size", "dataCenter"}]}
  GET    /network-volumes/{id}        POST /network-volumes {"name", "dataCenter", "size"}
  POST   /pods                        201 Pod {"id", "status", "cost", "runtime": {"uptime"}, ...}
  GET    /pods/{id}                   DELETE /pods/{id} (terminate; 204)
  GET    /pods/{id}/logs              Server-Sent Events: `id:` lines and `data: {"ts", "source", "line"}`
Errors are problem+json {"title", "status", "detail"}; 429 carries Retry-After (seconds).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from urllib.parse import quote

import httpx

from launcher.core.errors import UserError

DEFAULT_BASE_URL = "https://api.runpod.io/v2"
KEY_FIX = "set RUNPOD_API_KEY to a key from https://www.console.runpod.io/user/settings (API Keys)"
ATTEMPTS = 5
BACKOFF_S = 1.0  # first wait after a 5xx or a dropped connection; doubles each time
MAX_RETRY_AFTER_S = 120  # a longer Retry-After means a spent quota: fail now instead of stalling


def base_url(environ=os.environ) -> str:
    return (environ.get("RUNPOD_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


def api_key(environ=os.environ) -> str:
    key = environ.get("RUNPOD_API_KEY", "").strip()
    if not key:
        raise UserError(f"--backend runpod needs an API key: {KEY_FIX}")
    return key


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        text = body.get("detail") or body.get("title") or ""
        text += f" ({'; '.join(body['errors'])})" if body.get("errors") else ""
    except (ValueError, AttributeError, TypeError):
        text = response.text[:200]
    return " ".join(str(text).split()) or response.reason_phrase  # one line, always


class APIError(UserError):
    """A failed call, with its HTTP status (None when RunPod could not be reached)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class NotPlaced(APIError):
    """POST /pods refused this GPU type (400 or 403): another candidate may still be placed."""


class RunPodAPI:
    """A thin client: retries what is worth retrying, turns every failure into one UserError line."""

    def __init__(self, key: str, url: str | None = None, sleep: Callable[[float], None] = time.sleep):
        self._url = (url or base_url()).rstrip("/")
        # The key travels only in this header; it is never formatted into a message.
        self._client = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=httpx.Timeout(30.0))
        self._sleep = sleep

    def close(self) -> None:
        self._client.close()

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(ATTEMPTS):
            last = attempt == ATTEMPTS - 1
            try:
                response = self._client.request(method, self._url + path, **kwargs)
            except httpx.TransportError as exc:
                if last:
                    raise UserError(f"cannot reach the RunPod API at {self._url} ({type(exc).__name__}): "
                                    "check the network, or RUNPOD_API_BASE_URL") from None
                self._sleep(BACKOFF_S * 2 ** attempt)
                continue
            if response.status_code == 429 and not last:
                wait = float(response.headers.get("Retry-After") or BACKOFF_S * 2 ** attempt)
                if wait <= MAX_RETRY_AFTER_S:
                    self._sleep(wait)
                    continue
            elif response.status_code >= 500 and not last:
                self._sleep(BACKOFF_S * 2 ** attempt)
                continue
            return self._checked(method, path, response)
        raise AssertionError("unreachable")

    @staticmethod
    def _checked(method: str, path: str, response: httpx.Response) -> httpx.Response:
        status = response.status_code
        if status < 400:
            return response
        what = f"RunPod API {method} {path.split('?')[0]}"
        if status == 401:
            raise APIError(f"{what}: RunPod rejected the API key (401): {KEY_FIX}", status)
        if status == 403:
            raise APIError(f"{what}: the API key may not do this (403, {_detail(response)}): "
                           "set RUNPOD_API_KEY to a key with read/write access", status)
        if status == 429 or status >= 500:
            raise APIError(f"{what} failed with {status} ({_detail(response)}) after {ATTEMPTS} tries: "
                           "try again later (https://uptime.runpod.io)", status)
        raise APIError(f"{what} failed with {status}: {_detail(response)}", status)

    def _json(self, method: str, path: str, **kwargs):
        response = self._send(method, path, **kwargs)
        return response.json() if response.content else None

    # --- the calls ---------------------------------------------------------------------------------------

    def gpu_types(self) -> list[dict]:
        return self._json("GET", "/catalog/gpus")["gpus"]

    def network_volumes(self) -> list[dict]:
        return self._json("GET", "/network-volumes")["networkVolumes"]

    def network_volume(self, volume_id: str) -> dict:
        return self._json("GET", f"/network-volumes/{quote(volume_id, safe='')}")

    def create_network_volume(self, body: dict) -> dict:
        return self._json("POST", "/network-volumes", json=body)

    def create_pod(self, body: dict) -> dict:
        """The created pod; NotPlaced when RunPod refuses this GPU (400: no capacity, or a rule the body breaks;
        403: no access to its pool), which RunPod's docs say to answer by trying the next candidate."""
        try:
            return self._json("POST", "/pods", json=body)
        except APIError as exc:
            if exc.status in (400, 403):
                raise NotPlaced(str(exc), exc.status) from None
            raise

    def pod(self, pod_id: str) -> dict | None:
        """The pod, or None once RunPod no longer knows it (terminated and gone)."""
        try:
            return self._json("GET", f"/pods/{quote(pod_id, safe='')}")
        except APIError as exc:
            if exc.status == 404:
                return None
            raise

    def terminate_pod(self, pod_id: str) -> None:
        try:
            self._send("DELETE", f"/pods/{quote(pod_id, safe='')}")
        except APIError as exc:
            if exc.status != 404:  # already gone is what we wanted
                raise

    def log_events(self, pod_id: str, last_event_id: str | None, idle_s: float) -> Iterator[tuple[str, dict]]:
        """(event id, {"ts", "source", "line"}) from the pod's container log stream, until the server closes
        it or nothing arrives for idle_s. Resumes after last_event_id (SSE's Last-Event-ID), else backfills."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        params = {"source": "container", "tail": 5000}
        timeout = httpx.Timeout(30.0, read=idle_s)
        path = f"/pods/{quote(pod_id, safe='')}/logs"
        try:
            with self._client.stream("GET", self._url + path, params=params, headers=headers,
                                     timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    self._checked("GET", path, response)
                event_id = None
                for line in response.iter_lines():
                    if line.startswith("id:"):
                        event_id = line[3:].strip()
                    elif line.startswith("data:"):
                        try:
                            yield event_id or "", json.loads(line[5:].strip())
                        except ValueError:
                            continue
        except (httpx.ReadTimeout, httpx.RemoteProtocolError):
            return  # idle or dropped: the caller decides whether to reconnect
