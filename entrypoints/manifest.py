"""run.json: what ran, with what, and what came out. Written atomically after every step.

Secret values never reach it: the plan carries none, and any value equal to a secret in the
environment is replaced before writing, as a second line of defence.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from launcher.core.dataset import file_sha256
from launcher.core.secrets import secret_values


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _redact(value, secrets: list[str]):
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "***")
        return value
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, secrets) for k, v in value.items()}
    return value


class Manifest:
    def __init__(self, path: Path, data: dict, environ=os.environ):
        self.path, self.data = path, data
        self.secrets = list(secret_values(environ).values())

    def step(self, name: str, argv, status: str, exit_code: int | None = None, started: str | None = None):
        self.data["steps"].append({"name": name, "argv": list(argv), "status": status, "exit_code": exit_code,
                                   "started_at": started, "ended_at": now()})
        self.write()

    def finish(self, status: str, exit_code: int) -> None:
        run_dir = self.path.parent
        self.data.update(status=status, exit_code=exit_code, ended_at=now(), outputs=[
            {"path": str(p.relative_to(run_dir)), "size": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(run_dir.rglob("*.safetensors"))])
        self.write()

    def fail(self, reason: str) -> None:
        """Mark a run that ended by an error outside its steps; best effort, the error itself matters more."""
        try:
            self.data.update(status="failed", reason=" ".join(reason.split())[:500], ended_at=now())
            self.data["exit_code"] = self.data.get("exit_code") or 2
            self.write()
        except OSError:
            pass

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.partial")
        tmp.write_text(json.dumps(_redact(self.data, self.secrets), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path)
