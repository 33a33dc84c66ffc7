"""progress.json in the run folder: the running step and its training progress, for `launcher status`.

Fed by the step output the runner already streams (musubi's lines, parsed by launcher.core.progress) and written
atomically at most every INTERVAL_S seconds, so a slow network volume (Modal, RunPod) is never written per line.
Each training keeps its loss history: the run report draws its loss curve from it. When musubi says it saved a
checkpoint, the file is written at once and `on_checkpoint` runs (the entrypoint redraws report.html then).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from launcher.core import runfiles
from launcher.core.errors import UserError
from launcher.core.progress import Progress
from lora_gym_entrypoint.manifest import now

INTERVAL_S = 3.0


class ProgressFile:
    def __init__(self, path: Path, run_id: str, interval: float = INTERVAL_S, clock=time.monotonic,
                 on_checkpoint=None):
        self.path, self.interval, self.clock, self.on_checkpoint = Path(path), interval, clock, on_checkpoint
        self.data = {"run_id": run_id, "stage": None, "status": "running", "updated_at": None, "current": {},
                     "trainings": {}}
        self.progress: Progress | None = None
        self.written_at: float | None = None
        # A continued run keeps the loss history of its earlier attempts (rundir checked the file's shape).
        with contextlib.suppress(UserError):
            self.data["trainings"] = (runfiles.read_if_there(self.path) or {}).get("trainings", {})

    def start(self, stage: str) -> None:
        self.data.update(stage=stage, current={})
        self.progress = Progress() if stage.startswith("train") else None
        if self.progress and stage in self.data["trainings"]:  # resumed: continue its curve
            self.progress.history = self.data["trainings"][stage].get("history", [])
        self.write(force=True)

    def line(self, text: str) -> None:
        if self.progress is None:
            return
        saved_before = self.progress.checkpoint
        if self.progress.feed(text):
            self.data["current"] = self.progress.as_dict()
            self.data["trainings"][self.data["stage"]] = self.progress.as_dict() | {"history": self.progress.history}
            saved = self.progress.checkpoint != saved_before
            self.write(force=saved)
            if saved and self.on_checkpoint is not None:
                self.on_checkpoint(self.progress.checkpoint)

    def end(self, status: str) -> None:
        self.data["status"] = status
        self.write(force=True)

    def write(self, force: bool = False) -> None:
        at = self.clock()
        if not force and self.written_at is not None and at - self.written_at < self.interval:
            return
        self.written_at, self.data["updated_at"] = at, now()
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps(self.data) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)

    def wrap(self, name: str, out):
        return _Tee(out, self, f"[{name}] ")


class _Tee:
    """The step's output stream, passed through, each line also fed to the progress file."""

    def __init__(self, out, progress: ProgressFile, prefix: str):
        self.out, self.progress, self.prefix = out, progress, prefix

    def write(self, text: str) -> int:
        for line in text.splitlines():
            self.progress.line(line.removeprefix(self.prefix))
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()
