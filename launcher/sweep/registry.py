"""Sweeps in the run registry (launcher/runs.py): one record per sweep, `kind: sweep`, listing its run ids,
their grid values and cache passes, plus what its backend needs to find them again (a local output folder,
a Modal app and outputs volume, RunPod pods and volume). `launcher status SWEEP` reads every run's run.json
where the backend keeps it and prints one row per run."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from launcher import runs
from launcher.core import runfiles
from launcher.sweep.prepare import Sweep

# (run id, file name in its run folder) -> that JSON file (run.json, progress.json), or None when there is none yet
Reader = Callable[[str, str], "dict | None"]
CHECKPOINT = re.compile(r"-(\d{6})\.safetensors$")  # musubi's per-epoch file names: <name>-000005.safetensors


def is_sweep(record: dict) -> bool:
    return record.get("kind") == "sweep"


def save_sweep(sweep: Sweep, backend: str, extra: dict) -> dict:
    record = {"run_id": sweep.sweep_id, "kind": "sweep", "backend": backend, "preset": sweep.preset,
              "expert": sweep.expert, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "grid": {axis.key: list(axis.values) for axis in sweep.axes}, "base": list(sweep.base),
              "caches": [c.run_id for c in sweep.caches],
              "runs": [{"run_id": t.run_id, "grid": list(t.grid), "expert": t.expert, "cache": t.cache}
                       for t in sweep.trainings], **extra}
    runs.save(record)
    return record


def epoch(manifest: dict) -> str:
    """`saved/total`: the newest epoch checkpoint in run.json's outputs, of the run's epochs."""
    saved = [int(m[1]) for o in manifest.get("outputs") or [] if (m := CHECKPOINT.search(o.get("path", "")))]
    total = next((t.get("epochs") for t in (manifest.get("training") or {}).values()), None)
    final = manifest.get("status") == "succeeded"
    done = total if final and total else max(saved, default=0)
    return f"{done}/{total}" if total else (str(done) if done else "-")


def hours(manifest: dict, now: datetime | None = None) -> float:
    try:
        start = datetime.fromisoformat(manifest["started_at"])
        end = datetime.fromisoformat(manifest["ended_at"]) if manifest.get("ended_at") else now or datetime.now(UTC)
    except (KeyError, TypeError, ValueError):
        return 0.0
    return max(0.0, (end - start).total_seconds() / 3600)


def rows(record: dict, read: Reader, usd_per_hour: float | None) -> list[tuple[str, ...]]:
    """One row per run (and cache pass): run id, grid values, state, epoch, loss, cost so far."""
    found = [("run", "grid", "state", "epoch", "loss", "cost")]
    entries = [{"run_id": c, "grid": ["(cache pass)"]} for c in record.get("caches", [])] + record["runs"]
    for entry in entries:
        manifest = read(entry["run_id"], "run.json") or {}
        state = manifest.get("status") or (f"exit code {manifest.get('exit_code')}" if manifest else "not started")
        spent = "-" if usd_per_hour is None or not manifest else f"${hours(manifest) * usd_per_hour:.2f}"
        loss = last_loss(read(entry["run_id"], "progress.json")) if manifest else "-"
        found.append((entry["run_id"], " ".join(entry["grid"]), state, epoch(manifest), loss, spent))
    return found


def last_loss(progress: dict | None) -> str:
    """The moving-average loss musubi showed last, from the entrypoint's progress.json (one training per run)."""
    trainings = (progress or {}).get("trainings") or {}
    losses = [t.get("loss_avg") for t in trainings.values() if isinstance(t, dict)]
    value = next((v for v in reversed(losses) if isinstance(v, int | float)), None)
    return f"{value:.4g}" if value is not None else "-"


def table(lines: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines)


def local_reader(record: dict) -> Reader:
    def read(run_id: str, name: str) -> dict | None:
        return runfiles.read_if_there(Path(record["output"]) / run_id / name)
    return read
