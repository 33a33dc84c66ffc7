"""The local run registry: what `launcher status|logs|stop|pull RUN` need to find a detached run later.

One JSON file per run under `$LORA_GYM_HOME/runs/` (default `~/.local/state/lora-gym/runs/`): the run id,
its backend, preset and expert, and the platform's identifiers (Modal app/call ids, RunPod pod ids and
volume). Never a secret: records are scrubbed of every value of the secret environment variables.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from launcher.core import runfiles
from launcher.core.errors import UserError, closest
from launcher.core.inputs import SAFE_NAME, shown
from launcher.core.secrets import secret_values
from launcher.core.state import home  # noqa: F401  (runs.home() is the registry's folder for its callers)


def _path(run_id: str) -> Path:
    if not SAFE_NAME.fullmatch(run_id):
        raise UserError(f"{shown(run_id)} is not a run id: see `launcher status` for the list")
    return home() / "runs" / f"{run_id}.json"


def _assert_no_secrets(record: dict) -> None:
    text = json.dumps(record)
    for name, value in secret_values(os.environ).items():
        if value in text:
            raise RuntimeError(f"refusing to store the value of {name} in the run registry (a LoRA Gym bug)")


def save(record: dict) -> Path:
    """Write (or update) a run's record atomically; `record["run_id"]` names it."""
    record = {"updated_at": datetime.now(UTC).isoformat(timespec="seconds"), **record}
    _assert_no_secrets(record)
    path = _path(record["run_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read(path: Path) -> dict:
    """A record, checked (launcher/core/runfiles.py): a damaged one is one `error:` line naming it."""
    return runfiles.read(path, runfiles.RECORD, f"fix or remove that run record ({path}); the run's own files "
                                                "are not in it")


def load(run_id: str) -> dict:
    path = _path(run_id)
    if not path.is_file():
        known = [r["run_id"] for r in all_runs()]
        raise UserError(f"no run {run_id!r} in {path.parent}{closest(run_id, known)}: "
                        "see `launcher status` for the list")
    return _read(path)


def all_runs() -> list[dict]:
    folder = home() / "runs"
    records = [_read(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []
    return sorted(records, key=lambda r: r.get("created_at", ""), reverse=True)
