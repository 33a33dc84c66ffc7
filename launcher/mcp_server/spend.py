"""Spending is never implicit: a paid run starts only with the estimate the user was shown passed back.

An estimate's id is a digest of the request (every input that changes what runs or what it costs), the
preset's content and the amount, so it cannot be reused for another run, and a changed price or dataset
makes it stale. Nothing is stored: any server, restarted or not, checks an id the same way.
"""

from __future__ import annotations

import hashlib
import json

from launcher.mcp_server.calls import InputError


def estimate_id(request: dict, preset_sha256: str, usd: float) -> str:
    text = json.dumps({"request": request, "preset": preset_sha256, "usd": f"{usd:.2f}"}, sort_keys=True)
    return "est-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def estimate_data(est, request: dict, preset_sha256: str) -> dict:
    """What the `estimate` tool returns: the amount, its id and the CLI's own estimate line."""
    q = est.quote
    return {"estimate_id": estimate_id(request, preset_sha256, est.usd), "usd": round(est.usd, 2),
            "hours": round(est.hours, 2), "gpu": q.gpu, "gpus": q.gpus, "usd_per_hour": q.usd_per_hour,
            "line": est.line()}


def require_shown(est, request: dict, preset_sha256: str, shown_id: str | None, shown_usd: float | None) -> None:
    """Refuse to start unless the caller passes back this run's estimate id, or an amount it accepted that
    covers the estimate now (in cents)."""
    now = round(est.usd, 2)
    if shown_id is not None:
        if shown_id != estimate_id(request, preset_sha256, est.usd):
            raise InputError(f"estimate {shown_id} is not this run's estimate now (${now:.2f}; the inputs, dataset "
                             "or price changed): call estimate with these inputs, show it, and pass its estimate_id",
                             input_name="estimate_id")
        return
    if shown_usd is None:
        raise InputError(f"this run is paid (estimated at ${now:.2f}): call estimate with the same inputs, show the "
                         "user the estimate, and pass its estimate_id (or estimate_usd) to start",
                         input_name="estimate_id")
    if round(shown_usd, 2) < now:
        raise InputError(f"the run is estimated at ${now:.2f}, more than the ${shown_usd:.2f} shown: show the user "
                         "the new estimate and pass it back", input_name="estimate_usd")
