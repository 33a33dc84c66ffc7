"""Test double: a loopback stand-in for RunPod's REST API v2, the endpoints the RunPod backend and the
entrypoint's pod.py call (shapes from RunPod's OpenAPI document, api-reference-v2/openapi.json):

  GET    /v2/catalog/gpus              {"gpus": [GpuType]}
  GET    /v2/network-volumes           {"networkVolumes": [...]}; POST creates one (201); GET /{id}
  POST   /v2/pods                      201 Pod, status PROVISIONING; the body is recorded as sent
  GET    /v2/pods/{id}                 RUNNING from the first poll on, with runtime.uptime; TERMINATED after DELETE
  DELETE /v2/pods/{id}                 204; 404 for an unknown pod
  POST   /v2/pods/{id}/action          {"action": "stop"} -> 200 Pod, EXITED; "terminate" -> 204; an action the
                                        pod's status does not allow (its `actions`) -> 409, as the document says
  GET    /v2/pods/{id}/logs            text/event-stream of the pod's lines (the last `tail`, or those after
                                        Last-Event-ID), then closes; event ids are `<ts>/<sequence>`
Auth is `Authorization: Bearer <key>` with the account key or a pod-scoped key (`pod_key(id)`, the
RUNPOD_API_KEY RunPod sets in that pod); errors are problem+json. What a pod-scoped key may do is not documented:
here it may act on its own pod only, and end it only in the ways `pod_keys_may` names (both, by default); a
refused one is answered 403. `endings` records who ended which pod how. Faults (status, Retry-After) are queued per
operation: gpus, volumes, create, get, delete, action, logs.
`add_pod` puts a pod there as RunPod would describe it, for tests that start from a running pod.

Held to RunPod's published contract (tests/contracts/runpod-openapi.json): every request's body, query and
header parameters and credentials are validated (an invalid request is answered 422 with `errors`, as the
document says RunPod does), and so is every answer; each violation is recorded, and leaving the `with` block
with any raises, so no test passes on a request the real API would refuse or an answer it would never give.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from urllib.parse import parse_qs, urlsplit

from contracts.openapi import runpod as runpod_contract

from fakes.fake_gemini import Faults, LoopbackServer

_NVIDIA = {"manufacturer": "NVIDIA"}
GPUS = [
    {"id": "NVIDIA H100 80GB HBM3", "name": "H100 SXM", "pool": "HOPPER_80", **_NVIDIA, "memory": 80, "secure": True,
     "community": True, "price": {"secure": 2.69, "community": 2.39}, "maxCount": {"secure": 8, "community": 8}},
    {"id": "NVIDIA A100 80GB PCIe", "name": "A100 PCIe", "pool": "AMPERE_80", **_NVIDIA, "memory": 80, "secure": True,
     "community": True, "price": {"secure": 1.64, "community": 1.19}, "maxCount": {"secure": 8, "community": 8}},
    {"id": "NVIDIA GeForce RTX 4090", "name": "RTX 4090", "pool": "ADA_24", **_NVIDIA, "memory": 24, "secure": True,
     "community": True, "price": {"secure": 0.69, "community": 0.34}, "maxCount": {"secure": 8, "community": 4}},
    {"id": "NVIDIA L4", "name": "L4", "pool": "ADA_24", **_NVIDIA, "memory": 24, "secure": True, "community": False,
     "price": {"secure": 0.43, "community": 0.0}, "maxCount": {"secure": 8, "community": 0}},
]


# The actions each status allows, as the document's podAction operation lists them.
ACTIONS = {"RUNNING": ["stop", "restart", "terminate"], "PROVISIONING": ["stop", "terminate"],
           "STARTING": ["stop", "terminate"], "EXITED": ["start", "terminate"], "ERROR": ["start", "terminate"]}


def problem(status: int, detail: str, headers: dict | None = None, errors: list[str] | None = None):
    """An RFC 9457 problem answer, as RunPod sends its errors."""
    body = {"title": {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
                      422: "Unprocessable Entity", 429: "Too Many Requests"}.get(status, "Error"),
            "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return status, {"Content-Type": "application/problem+json", **(headers or {})}, json.dumps(body).encode()


class FakeRunPod(LoopbackServer):
    def __init__(self, api_key: str = "rpa_test-account-key", uptime_scale: float = 1.0):
        super().__init__()
        self.api_key, self.uptime_scale = api_key, uptime_scale
        self.faults = Faults()
        self.sold_out: set[str] = set()  # GPU ids that POST /pods refuses for capacity
        self.volumes: dict[str, dict] = {}
        self.pods: dict[str, dict] = {}
        self.logs: dict[str, list[str]] = {}
        self._stamps: dict[str, list[str]] = {}  # each log line's ts
        self.created: list[dict] = []  # every create-pod body, as received
        self.raw_bodies: list[bytes] = []  # every request body, to scan for secrets
        self.auth_headers: list[str] = []
        self.pod_keys_may = {"terminate", "stop"}
        self.endings: list[tuple[str, str, str]] = []  # (pod id, terminate | stop, "pod key" | "account key")
        self.contract_violations: list[str] = []
        self._ids = itertools.count(1)

    def __exit__(self, *exc):
        super().__exit__(*exc)
        if self.contract_violations and exc[0] is None:
            raise AssertionError("RunPod contract violations:\n" + "\n".join(self.contract_violations))

    @property
    def url(self) -> str:
        return f"{self.base_url}/v2"

    @staticmethod
    def pod_key(pod_id: str) -> str:
        return f"rpa_pod-scoped-{pod_id}"

    def add_volume(self, volume_id: str, datacenter: str = "US-KS-2", name: str = "vol") -> dict:
        self.volumes[volume_id] = {"id": volume_id, "name": name, "size": 50, "dataCenter": datacenter,
                                   "type": "STANDARD"}
        return self.volumes[volume_id]

    def log(self, pod_id: str, *lines: str) -> None:
        self.logs.setdefault(pod_id, []).extend(lines)
        self._stamps.setdefault(pod_id, []).extend([_now()] * len(lines))

    def add_pod(self, pod_id: str, status: str = "RUNNING", gpu: str = GPUS[0]["id"], **fields) -> dict:
        """A pod as if created with a minimal body (then `fields` set), already in `status`."""
        body = {"name": f"pod-{pod_id}", "image": "example/image:1", "gpu": {"id": gpu, "count": 1},
                "cloud": "SECURE", "disk": 50, "mounts": {}, "env": {}}
        self._new_pod(pod_id, body)
        self.pods[pod_id].update(status=status, **fields)
        return self._view(pod_id)

    def _authorized(self, handler) -> bool:
        header = handler.headers.get("Authorization", "")
        self.auth_headers.append(header)
        keys = {self.api_key, *(self.pod_key(p) for p in self.pods)}
        return header.startswith("Bearer ") and header[7:] in keys

    def _key_of(self, handler) -> str:
        return "account key" if handler.headers["Authorization"][7:] == self.api_key else "pod key"

    def _refused(self, handler, pod_id: str, action: str):
        """403 when a pod-scoped key acts on another pod, or ends its own in a way `pod_keys_may` leaves out."""
        key = handler.headers["Authorization"][7:]
        if key != self.api_key and (key != self.pod_key(pod_id) or action not in self.pod_keys_may):
            return problem(403, f"this API key may not {action} pod {pod_id}")
        return None

    def handle(self, method, path, handler):
        self.raw_bodies.append(handler.body)
        contract = runpod_contract()
        try:
            sent = json.loads(handler.body) if handler.body else None
        except ValueError:
            sent = handler.body
        if contract.operation(method, path) is None:
            self.contract_violations.append(f"{method} {path} is not an operation of the document")
            return problem(404, f"no route {method} {path}")
        wrong = contract.sent_problems(method, path, handler, sent)
        if wrong:
            self.contract_violations += wrong
            return problem(422, "Request validation failed.", errors=wrong)
        status, headers, body = self._answer(method, path, handler)
        self.contract_violations += contract.answer_problems(method, path, status, headers, body)
        return status, headers, body

    def _answer(self, method, path, handler):
        if not self._authorized(handler):
            return problem(401, "invalid api key")
        routes = [("GET", r"^/v2/catalog/gpus$", "gpus", self._gpus),
                  ("GET", r"^/v2/network-volumes$", "volumes", self._list_volumes),
                  ("POST", r"^/v2/network-volumes$", "volumes", self._create_volume),
                  ("GET", r"^/v2/network-volumes/([^/]+)$", "volumes", self._get_volume),
                  ("POST", r"^/v2/pods$", "create", self._create_pod),
                  ("GET", r"^/v2/pods/([^/]+)$", "get", self._get_pod),
                  ("DELETE", r"^/v2/pods/([^/]+)$", "delete", self._delete_pod),
                  ("POST", r"^/v2/pods/([^/]+)/action$", "action", self._pod_action),
                  ("GET", r"^/v2/pods/([^/]+)/logs$", "logs", self._logs)]
        for route_method, pattern, op, action in routes:
            match = re.match(pattern, path)
            if method == route_method and match:
                fault = self.faults.draw(op, random_ops=())
                if fault:
                    status, retry_after = fault
                    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                    return problem(status, f"injected {status}", headers)
                return action(handler, *match.groups())
        raise AssertionError(f"the document has {method} {path} and the fake no route for it")

    def _gpus(self, handler):
        return 200, {}, {"gpus": GPUS}

    def _list_volumes(self, handler):
        return 200, {}, {"networkVolumes": list(self.volumes.values())}

    def _create_volume(self, handler):
        body = json.loads(handler.body)
        volume = self.add_volume(f"vol{next(self._ids)}", body["dataCenter"], body["name"])
        return 201, {}, volume

    def _get_volume(self, handler, volume_id):
        volume = self.volumes.get(volume_id)
        return (200, {}, volume) if volume else problem(404, "network volume not found")

    def _create_pod(self, handler):
        body = json.loads(handler.body)
        if body["gpu"]["id"] in self.sold_out:  # RunPod's capacity refusal: a 400 with only a human detail
            return problem(400, "There are no longer any instances available with the requested specifications. "
                                "Please refresh and try again.")
        self.created.append(body)
        pod_id = f"pod{next(self._ids)}"
        self._new_pod(pod_id, body)
        return 201, {}, self._view(pod_id)

    def _new_pod(self, pod_id: str, body: dict) -> None:
        gpu = next(g for g in GPUS if g["id"] == body["gpu"]["id"])
        mount = body.get("mounts", {}).get("network", [{}])[0]
        datacenter = self.volumes.get(mount.get("volumeId"), {}).get("dataCenter") or \
            (body.get("dataCenterIds") or ["US-KS-2"])[0]
        pod = {k: v for k, v in body.items() if k != "dataCenterIds"}  # a create-only field
        # Every field RunPod's Pod schema requires, with the values a pod being provisioned has.
        self.pods[pod_id] = {"args": "", "ports": [], "registry": None, "cudaVersion": None, "template": None,
                             "ssh": {"proxy": None, "direct": None}, "locked": False, "runtime": None,
                             "globalNetworking": {"enabled": False}, "startedAt": None, **pod,
                             "id": pod_id, "status": "PROVISIONING", "cost": gpu["price"]["secure"],
                             "dataCenterId": datacenter, "created": time.monotonic(),
                             "createdAt": _now()}

    def _view(self, pod_id: str) -> dict:
        pod = {k: v for k, v in self.pods[pod_id].items() if k != "created"}
        pod["actions"] = ACTIONS.get(pod["status"], [])
        if pod["status"] == "RUNNING":
            pod["runtime"] = {"uptime": int((time.monotonic() - self.pods[pod_id]["created"]) * self.uptime_scale)}
            pod["startedAt"] = pod["createdAt"]
        if pod["status"] == "TERMINATED":
            pod["cost"] = 0.0
        return pod

    def _get_pod(self, handler, pod_id):
        if pod_id not in self.pods:
            return problem(404, "pod not found")
        if self.pods[pod_id]["status"] == "PROVISIONING":
            self.pods[pod_id]["status"] = "RUNNING"
        return 200, {}, self._view(pod_id)

    def _delete_pod(self, handler, pod_id):
        if pod_id not in self.pods or self.pods[pod_id]["status"] == "TERMINATED":
            return problem(404, "pod not found")
        return self._refused(handler, pod_id, "terminate") or self._end(handler, pod_id, "terminate")

    def _pod_action(self, handler, pod_id):
        if pod_id not in self.pods or self.pods[pod_id]["status"] == "TERMINATED":
            return problem(404, "pod not found")
        action = json.loads(handler.body)["action"]
        if action not in ACTIONS.get(self.pods[pod_id]["status"], []):
            return problem(409, f"cannot {action} a pod that is {self.pods[pod_id]['status']}")
        if action not in ("stop", "terminate"):
            raise AssertionError(f"the fake does not model the action {action!r}")
        return self._refused(handler, pod_id, action) or self._end(handler, pod_id, action)

    def _end(self, handler, pod_id: str, how: str):
        self.endings.append((pod_id, how, self._key_of(handler)))
        if how == "terminate":
            self.pods[pod_id]["status"] = "TERMINATED"
            return 204, {}, None
        self.pods[pod_id]["status"] = "EXITED"
        return 200, {}, self._view(pod_id)

    def _logs(self, handler, pod_id):
        if pod_id not in self.pods:
            return problem(404, "pod not found")
        lines, stamps = self.logs.get(pod_id, []), self._stamps.get(pod_id, [])
        resume = handler.headers.get("Last-Event-ID")
        tail = int((parse_qs(urlsplit(handler.path).query).get("tail") or ["100"])[0])
        first = int(resume.rsplit("/", 1)[-1]) + 1 if resume else max(1, len(lines) - tail + 1)
        events = "".join(f"id: {stamps[n - 1]}/{n:012d}\n"
                         f"data: {json.dumps({'ts': stamps[n - 1], 'source': 'container', 'line': lines[n - 1]})}\n\n"
                         for n in range(first, len(lines) + 1))
        return 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, events.encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
