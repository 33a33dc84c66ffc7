"""The verbs on a started Modal run, found again by its run record: first log lines, status, logs, stop, pull.

`modal` is imported only inside each function, when a run is looked up (never by `--help` or a dry run).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from launcher.core.errors import UserError
from launcher.core.inputs import inside

OUTPUTS_VOLUME = "lora-gym-outputs"


def first_lines(record: dict, count: int, wait_s: float) -> None:
    """Print the run's first log lines, then detach: stop at `count` lines or after `wait_s` without one."""
    import modal

    for n, entry in enumerate(modal.App.lookup(record["app_id"]).logs.stream(timeout=wait_s)):
        sys.stdout.write(entry.message)
        if n + 1 >= count:
            break
    sys.stdout.flush()


def outcome(call_id: str) -> tuple[str, int | None]:
    """("running" | "succeeded" | "failed: ...", exit code or None while it runs) of a function call."""
    import modal

    try:
        modal.FunctionCall.from_id(call_id).get(timeout=0)
        return "succeeded", 0
    except TimeoutError:  # the builtin one, from polling with timeout=0: no result yet
        return "running", None
    except Exception as exc:
        if type(exc).__name__ == "OutputExpiredError":  # Modal keeps results for a limited time only
            return "ended (its result has expired at Modal: see `launcher pull`)", None
        # the StageFailed raised in the container, or Modal's own failure
        code = getattr(exc, "exit_code", 1)
        return f"failed ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__})", code


def status(record: dict) -> dict:
    import modal

    state, _ = outcome(record["call_id"])
    rows = {"run": record["run_id"], "state": state, "gpu": f"{record.get('gpus', 1)} x {record.get('gpu')}",
            "$/h": f"{record.get('usd_per_hour', 0) * record.get('gpus', 1):.2f} (while GPUs run)",
            "app": record["app_id"], "started": record.get("created_at", "")}
    if record.get("expert") == "both":  # the orchestrator's children: the cache pass and the two experts
        for child in _children(modal.FunctionCall.from_id(record["call_id"]).get_call_graph()):
            rows[child.function_name] = f"{getattr(child.status, 'name', child.status)} ({child.function_call_id})"
    return rows | progress_rows(record)


def progress_rows(record: dict) -> dict:
    """Each run folder's progress.json on the outputs volume (written by the entrypoint every few seconds)."""
    import modal
    from modal.exception import Error as ModalError

    from launcher.core import runfiles
    from launcher.core.progress import status_line

    volume, run_id = modal.Volume.from_name(record.get("outputs_volume", OUTPUTS_VOLUME)), record["run_id"]
    folders = {"progress high": f"{run_id}/high", "progress low": f"{run_id}/low"} \
        if record.get("expert") == "both" else {"progress": run_id}
    rows = {}
    for label, folder in folders.items():
        try:
            raw = b"".join(volume.read_file(f"{folder}/progress.json"))
        except (ModalError, OSError):  # not written yet (still caching) or gone
            continue
        where = f"{record.get('outputs_volume', OUTPUTS_VOLUME)}:/{folder}/progress.json"  # the volume's own path
        rows[label] = status_line(runfiles.parse(raw, where), now())
    return rows


def _children(graph) -> list:
    found = []
    for node in graph:
        found += [c for c in node.children if c.function_name != "both"] + _children(node.children)
    return found


def logs(record: dict, follow: bool) -> int:
    import modal

    manager = modal.App.lookup(record["app_id"]).logs
    for entry in manager.stream() if follow else manager.tail(200):
        sys.stdout.write(entry.message)
        sys.stdout.flush()
    if not follow:
        return 0
    state, code = outcome(record["call_id"])
    print(f"launcher: run {record['run_id']} {state}", file=sys.stderr)
    return code or 0


def stop(record: dict) -> int:
    import modal

    # Stopping the app ends every container of the run (the orchestrator and both experts): nothing bills.
    modal.App.lookup(record["app_id"]).stop()
    print(f"stopped {record['run_id']} (app {record['app_id']})", file=sys.stderr)
    return 0


def pull(record: dict, dest: str) -> int:
    """Download /output/<run id>/ from the outputs volume into dest/<run id>/; files already there with the
    same size are skipped, so a pull during the run and one after it download each file once."""
    import modal
    from modal.volume import FileEntryType

    volume, run_id = modal.Volume.from_name(record.get("outputs_volume", OUTPUTS_VOLUME)), record["run_id"]
    entries = [e for e in volume.listdir(run_id, recursive=True) if e.type == FileEntryType.FILE]
    if not entries:
        raise UserError(f"run {run_id} has no outputs yet: see `launcher status {run_id}`")
    for entry in entries:
        target = Path(dest) / entry.path
        if not inside(Path(dest), target):  # never write outside dest, whatever the volume holds
            raise UserError(f"volume file {entry.path!r} would land outside {dest}: remove it from the volume")
        if target.is_file() and target.stat().st_size == entry.size:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        with partial.open("wb") as handle:
            volume.read_file_into_fileobj(entry.path, handle)
        os.replace(partial, target)
        print(f"pulled {target}", file=sys.stderr)
    return 0


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
