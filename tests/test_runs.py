"""The run registry and the `status|logs|stop|pull` verbs that find detached runs through it."""

from __future__ import annotations

import json

import pytest

from launcher import backends, runs
from launcher.cli.main import main
from launcher.core.errors import UserError


class FakeDetachedBackend:
    """Test double of a detached backend: records the verbs it receives."""

    calls: list = []

    def status(self, record):
        self.calls.append(("status", record["run_id"]))
        return {"state": "RUNNING", "cost so far": "$1.23"}

    def logs(self, record, follow):
        self.calls.append(("logs", follow))
        print("[train] step 1")
        return 0

    def stop(self, record):
        self.calls.append(("stop", record["run_id"]))
        return 0

    def pull(self, record, dest):
        self.calls.append(("pull", dest))
        return 0


@pytest.fixture
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_GYM_HOME", str(tmp_path))
    monkeypatch.setitem(backends.BACKENDS, "fake", "test_runs:FakeDetachedBackend")
    FakeDetachedBackend.calls = []
    runs.save({"run_id": "wan21-run-1", "backend": "fake", "preset": "wan21-t2v-14b",
               "created_at": "2026-11-24T00:00:00"})
    return tmp_path


def test_verbs_dispatch_to_the_runs_backend(registry, capsys):
    assert main(["status", "wan21-run-1"]) == 0 and "RUNNING" in capsys.readouterr().out
    assert main(["logs", "wan21-run-1", "--follow"]) == 0 and "[train] step 1" in capsys.readouterr().out
    assert main(["stop", "wan21-run-1"]) == 0 and main(["pull", "wan21-run-1", str(registry / "dl")]) == 0
    assert FakeDetachedBackend.calls == [("status", "wan21-run-1"), ("logs", True), ("stop", "wan21-run-1"),
                                         ("pull", str(registry / "dl"))]


def test_status_without_a_run_lists_them(registry, capsys):
    assert main(["status"]) == 0 and capsys.readouterr().out.startswith("wan21-run-1  fake  wan21-t2v-14b")


def test_unknown_run_is_one_line_with_a_suggestion(registry, capsys):
    assert main(["logs", "wan21-run-2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run 'wan21-run-2'" in err[0] and "did you mean 'wan21-run-1'" in err[0]


def test_records_never_hold_secret_values(registry, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_SecretValue")
    with pytest.raises(RuntimeError, match="RUNPOD_API_KEY"):
        runs.save({"run_id": "r3", "backend": "fake", "env": {"X": "rpa_SecretValue"}})
    assert not (registry / "runs" / "r3.json").exists()
    assert json.loads((registry / "runs" / "wan21-run-1.json").read_text())["preset"] == "wan21-t2v-14b"


def test_run_ids_cannot_escape_the_registry(registry):
    with pytest.raises(UserError, match="not a run id"):
        runs.load("../etc/passwd")
