"""A `--backend local` run found again through the run registry (launcher/runs.py): its state is what its run
folder on this machine says (run.json, progress.json), read and checked by launcher/core/runfiles.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from launcher.core import runfiles
from launcher.core.errors import UserError


def run_folder(record: dict) -> Path:
    if not record.get("output"):
        raise UserError(f"run record {record['run_id']} has no output folder: it was recorded by an older "
                        "launcher; look for the run folder where you ran it")
    return Path(record["output"]) / record["run_id"]


def state(record: dict) -> str:
    """`running`, `succeeded`, `failed (exit code 3)` ... from run.json; a run still caching has none yet."""
    manifest = runfiles.read_if_there(run_folder(record) / "run.json")
    if manifest is None:
        return "not started (no run.json yet)" if run_folder(record).parent.is_dir() else "run folder not found"
    if manifest["status"] in ("succeeded", "running"):
        return manifest["status"]
    return f"{manifest['status']} (exit code {manifest.get('exit_code')})"


def status(record: dict) -> dict:
    from launcher.core.progress import status_line

    folder = run_folder(record)
    rows = {"run": record["run_id"], "state": state(record), "folder": str(folder),
            "started": record.get("created_at", "")}
    progress = runfiles.read_if_there(folder / "progress.json")
    if progress is not None:
        rows["progress"] = status_line(progress, datetime.now(UTC).isoformat(timespec="seconds"))
    return rows


def not_detached(record: dict, how: str) -> str:
    return (f"{record['run_id']} is a local run: {how}; `launcher status {record['run_id']}` shows its state and "
            f"its files are in {run_folder(record)}")
