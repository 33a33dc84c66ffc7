"""On a RunPod pod: end the pod when the job ends, and stop the job at its hour limit. Standard library only.

RunPod restarts a container whose process exits, so a finished job would start over and keep billing: the
entrypoint ends its own pod instead, on success and on failure. The hour limit (LORA_GYM_MAX_HOURS) runs here,
in the pod, so it holds with the user's laptop closed. How a pod ends itself, from RunPod's documents
(github.com/runpod/docs) and runpodctl's source (github.com/runpod/runpodctl, 2e2df89):
- RunPod sets RUNPOD_POD_ID and RUNPOD_API_KEY, a "Pod-scoped API key", in every pod
  (pods/templates/environment-variables.mdx), for managing it from inside (get-started/connect-to-runpod.mdx);
- pods/manage-pods.mdx terminates a pod with `runpodctl pod delete $RUNPOD_POD_ID` or REST v1
  `DELETE https://rest.runpod.io/v1/pods/$RUNPOD_POD_ID`, and stops one from inside itself with
  `sleep 2h; runpodctl pod stop $RUNPOD_POD_ID &`; runpodctl sends those v1 requests with
  `Authorization: Bearer $RUNPOD_API_KEY` (internal/api/pods.go DeletePod, internal/api/client.go,
  internal/configenv/configenv.go);
- REST v1 is retired on 2026-11-15 (api-reference/overview.mdx at runpod/docs a900806, 2026-08-20; 2026-12-01
  in the commit before), so neither it nor the runpodctl that calls it can be relied on since. The migration
  guide maps the v1 delete to `DELETE /v2/pods/{id}` and the v1 stop to `POST /v2/pods/{id}/action
  {"action": "stop"}`, with keys and scopes unchanged (api-reference-v2/migrate-from-v1.mdx).
So the pod terminates itself with the v2 DELETE. The docs never say what a pod-scoped key may do; should RunPod
refuse it the terminate (401/403), the pod stops itself instead, as the docs' in-pod example does: a stopped
pod bills no GPU, and the network volume keeps the run folder.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from urllib.parse import quote

DEFAULT_BASE_URL = "https://api.runpod.io/v2"
ATTEMPTS = 5
BACKOFF_S = 2.0  # doubles after each failed try; a Retry-After from RunPod takes precedence
TIMEOUT_S = 30
# (what, method, path after /pods/{id}, JSON body): terminate first, stop if the pod's key may not terminate.
WAYS = (("terminate", "DELETE", "", None), ("stop", "POST", "/action", {"action": "stop"}))


def _log(message: str) -> None:
    print(f"[lora-gym] {message}", file=sys.stderr, flush=True)


def _retry_wait(exc: urllib.error.HTTPError | None, attempt: int) -> float:
    header = exc.headers.get("Retry-After") if exc is not None and exc.headers else None
    try:
        return min(float(header), 300.0) if header else BACKOFF_S * 2 ** attempt
    except ValueError:
        return BACKOFF_S * 2 ** attempt


def _send(request: urllib.request.Request, what: str, sleep: Callable[[float], None]) -> int | None:
    """The HTTP status RunPod answered, retrying 429, 5xx and network errors a few times; None if none came."""
    for attempt in range(ATTEMPTS):
        error = None
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            if exc.code != 429 and exc.code < 500:
                return exc.code
            error, reason = exc, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = type(exc).__name__
        if attempt < ATTEMPTS - 1:
            wait = _retry_wait(error, attempt)
            _log(f"{what} failed ({reason}); retrying in {wait:.0f} s")
            sleep(wait)
    return None


def terminate_own_pod(environ: Mapping[str, str], sleep: Callable[[float], None] = time.sleep) -> bool:
    """End this pod through RunPod's REST API v2; True once it is terminated or stopped (or already gone).
    The key is sent only in the Authorization header and never logged."""
    pod_id, key = environ.get("RUNPOD_POD_ID", "").strip(), environ.get("RUNPOD_API_KEY", "").strip()
    if not (pod_id and key):
        _log("cannot terminate this pod: RUNPOD_POD_ID or RUNPOD_API_KEY is not set (not on RunPod?)")
        return False
    url = f"{(environ.get('RUNPOD_API_BASE_URL') or DEFAULT_BASE_URL).rstrip('/')}/pods/{quote(pod_id, safe='')}"
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    for what, method, path, body in WAYS:
        data = json.dumps(body).encode() if body else None
        request = urllib.request.Request(url + path, data=data, method=method,
                                         headers=headers | ({"Content-Type": "application/json"} if data else {}))
        status = _send(request, f"{what} pod {pod_id}", sleep)
        if status is not None and status < 300:
            _log(f"pod {pod_id}: {what} requested (HTTP {status})")
            return True
        if status == 404:
            _log(f"pod {pod_id} is already gone")
            return True
        if status not in (401, 403):
            break
        _log(f"RunPod refused to {what} pod {pod_id} with the pod's own key (HTTP {status})")
    return False  # the caller says how to end it by hand


def start_deadline(hours: float | None, on_expire: Callable[[], None]) -> threading.Timer | None:
    """Call on_expire once `hours` have passed (a daemon timer: it never keeps the process alive).
    None when there is no limit; cancel() the timer when the job ends first."""
    if not hours or hours <= 0:
        return None

    def expire() -> None:
        _log(f"the run reached its limit of {hours:g} h (--max-hours / --max-cost): stopping it")
        on_expire()

    timer = threading.Timer(hours * 3600, expire)
    timer.daemon = True
    timer.start()
    return timer

