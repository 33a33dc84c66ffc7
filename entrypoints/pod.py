"""On a RunPod pod: end the pod when the job ends, and stop the job at its hour limit. Standard library only.

RunPod restarts a container whose process exits, so a finished job would start over and keep billing: the
entrypoint terminates its own pod instead, on success and on failure, with the pod's own RUNPOD_POD_ID and
pod-scoped RUNPOD_API_KEY (both set by RunPod in every pod). The hour limit (LORA_GYM_MAX_HOURS) runs here,
in the pod, so it holds with the user's laptop closed.
"""

from __future__ import annotations

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


def _log(message: str) -> None:
    print(f"[lora-gym] {message}", file=sys.stderr, flush=True)


def _retry_wait(exc: urllib.error.HTTPError | None, attempt: int) -> float:
    header = exc.headers.get("Retry-After") if exc is not None and exc.headers else None
    try:
        return min(float(header), 300.0) if header else BACKOFF_S * 2 ** attempt
    except ValueError:
        return BACKOFF_S * 2 ** attempt


def terminate_own_pod(environ: Mapping[str, str], sleep: Callable[[float], None] = time.sleep) -> bool:
    """DELETE this pod through RunPod's REST API v2; True once it is terminated (or already gone).

    Retries 429, 5xx and network errors a few times; gives up at once on 401/403 (a key that may not do it).
    The key is sent only in the Authorization header and never logged.
    """
    pod_id, key = environ.get("RUNPOD_POD_ID", "").strip(), environ.get("RUNPOD_API_KEY", "").strip()
    if not (pod_id and key):
        _log("cannot terminate this pod: RUNPOD_POD_ID or RUNPOD_API_KEY is not set (not on RunPod?)")
        return False
    base = (environ.get("RUNPOD_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    request = urllib.request.Request(f"{base}/pods/{quote(pod_id, safe='')}", method="DELETE",
                                     headers={"Authorization": f"Bearer {key}", "Accept": "application/json"})
    for attempt in range(ATTEMPTS):
        error = None
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                _log(f"pod {pod_id} terminated (HTTP {response.status})")
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                _log(f"pod {pod_id} is already gone")
                return True
            if exc.code in (401, 403):
                _log(f"RunPod refused to terminate pod {pod_id} (HTTP {exc.code}): terminate it in the console")
                return False
            error, reason = exc, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            reason = type(exc).__name__
        if attempt < ATTEMPTS - 1:
            wait = _retry_wait(error, attempt)
            _log(f"terminating pod {pod_id} failed ({reason}); retrying in {wait:.0f} s")
            sleep(wait)
    _log(f"could not terminate pod {pod_id} after {ATTEMPTS} tries: terminate it in the RunPod console")
    return False


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

