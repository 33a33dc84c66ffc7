"""`launcher diff RUN_A RUN_B`: two runs' differences (image, values, overrides, dataset files, weights, losses),
as text and JSON; bad or missing runs are one `error:` line. Run A is a real run of the entrypoint (trainer double);
run B is its folder copied, then changed the way a second run would differ."""

from __future__ import annotations

import json
import shutil

import pytest
from test_rerun import finished  # noqa: F401  (the module's one entrypoint run)

from launcher import rerun, runs
from launcher.cli.main import main
from launcher.core.job import prepare


@pytest.fixture
def two_runs(finished, tmp_path):  # noqa: F811
    folder, _, _ = finished
    other = tmp_path / "other-run"
    shutil.copytree(folder, other)
    data = json.loads((other / "run.json").read_text())
    data["run_id"] = "other-run"
    data["image"] = {"ref": "lora-gym-wan21:0.1.0", "digest": "sha256:" + "cd" * 32, "source": "engine"}
    data["settings"]["train"]["learning_rate"] = 2e-4
    data["preset"]["overrides"] = [o for o in data["preset"]["overrides"] if "learning_rate" not in o] + [
        "train.learning_rate=2e-4"]
    changed = data["dataset"]["files"][0]
    changed["sha256"] = "0" * 64
    removed = data["dataset"]["files"].pop()
    data["dataset"]["files"].append({"path": "images/extra.png", "sha256": "1" * 64})
    data["dataset"]["sha256"] = "2" * 64
    data["weights"][0]["sha256"] = "3" * 64
    (other / "run.json").write_text(json.dumps(data))
    progress = json.loads((other / "progress.json").read_text())
    progress["trainings"]["train"]["loss_avg"] = 0.5
    (other / "progress.json").write_text(json.dumps(progress))
    return folder, other, changed["path"], removed["path"], data["weights"][0]


def test_text_names_every_difference(two_runs, capsys):
    a, b, changed, removed, weight = two_runs
    assert main(["diff", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    before = json.loads((a / "progress.json").read_text())["trainings"]["train"]["loss_avg"]
    assert f"A: {a.name} ({a / 'run.json'})" in out and f"B: other-run ({b / 'run.json'})" in out
    for line in ["image:", "  source: reference -> engine", "  train.learning_rate: 5e-05 -> 0.0002",
                 "  - train.learning_rate=5e-5 (A only)", "  + train.learning_rate=2e-4 (B only)",
                 f"  changed: {changed}", "  added: images/extra.png", f"  removed: {removed}",
                 f"  {weight['repo']}:{weight['path']}:", f"  train: {before} -> 0.5"]:
        assert line in out.splitlines() or any(row.startswith(line) for row in out.splitlines()), line
    assert "preset: same" in out.splitlines()


def test_json_and_a_run_against_itself(two_runs, capsys):
    a, b, changed, _, _ = two_runs
    assert main(["diff", str(a), str(b / "run.json"), "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["values"] == {"train.learning_rate": [5e-05, 0.0002]}
    assert data["dataset"]["changed"] == [changed] and data["dataset"]["added"] == ["images/extra.png"]
    assert data["image"]["digest"][1] == "sha256:" + "cd" * 32
    assert main(["diff", str(a), str(a)]) == 0
    same = capsys.readouterr().out.splitlines()
    assert {"image: same", "values: same", "overrides: same", "weights: same"} <= set(same)
    assert any(line.startswith("dataset: same (") for line in same)


def test_a_registry_run_has_no_losses_until_pulled(finished, capsys):  # noqa: F811
    folder, dataset, _ = finished
    job = prepare("wan21-t2v-1.3b", None, ("train.max_train_epochs=3",), dataset)
    runs.save({"run_id": "reg-run", "backend": "modal", "created_at": "2026-12-01T00:00:00",
               "reproduce": rerun.reproduce_entry(job, str(dataset), "ghcr.io/x/lora-gym-wan21:0.1.0")})
    assert main(["diff", "reg-run", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "dataset: same (" in out and "  source: unresolved -> reference" in out
    assert "  train: (none) -> " in out


@pytest.mark.parametrize("make, message", [
    (lambda tmp: "no-such-run", "error: no run 'no-such-run'"),
    (lambda tmp: str(tmp), "has no run.json"),
    (lambda tmp: (tmp / "run.json").write_text("{not json") and str(tmp / "run.json"), "cannot be read"),
    (lambda tmp: (tmp / "run.json").write_text('{"image": "x", "dataset": {"files": [1]}}') and str(tmp),
     "is not a run record LoRA Gym wrote (dataset is not an object; image is not an object)"),
])
def test_a_bad_or_missing_run_is_one_error_line(finished, tmp_path, capsys, make, message):  # noqa: F811
    folder, _, _ = finished
    assert main(["diff", str(folder), make(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: ") and message in err
