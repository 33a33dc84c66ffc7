"""Reproducible runs: run.json and the registry keep what a run was started with (image as pinned, preset text,
overrides, every dataset file's sha256, weights); `launcher run --from` plans exactly that run again; report.html
is rewritten at every checkpoint. The entrypoint runs with the musubi-tuner doubles in tests/fakes."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET
from test_entrypoint import Container

from launcher import rerun, runs
from launcher.cli.main import main
from launcher.core import provenance
from launcher.core.job import prepare
from lora_gym_entrypoint.progress import ProgressFile

PRESET = "wan21-t2v-1.3b"
OVERRIDES = ("train.max_train_epochs=3", "train.save_every_n_epochs=1", "samples.enabled=false",
             "train.learning_rate=5e-5")
PINNED = "ghcr.io/you/lora-gym-wan21:0.1.0@sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One run of the entrypoint (trainer double): its folder, dataset copy and output."""
    tmp = tmp_path_factory.mktemp("rerun")
    dataset = tmp / "dataset"
    shutil.copytree(EXAMPLE_DATASET, dataset)
    box = Container(tmp, dataset)
    box.stock_weights(PRESET)
    result = box.run(box.env(PRESET, LORA_GYM_SET=" ".join(OVERRIDES), LORA_GYM_IMAGE=PINNED))
    assert result.returncode == 0, result.stderr + result.stdout
    [folder] = box.runs()
    return folder, dataset, result.stdout


def plan_and_notes(capsys, *argv: str) -> tuple[dict, str]:
    assert main(["run", *argv, "--dry-run", "--format", "json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def plan_of(capsys, *argv: str) -> dict:
    return plan_and_notes(capsys, *argv)[0]


def argv_of(plan: dict) -> list[list[str]]:
    return [[arg.replace(plan["run_id"], "<run>") for arg in step["argv"]] for step in plan["steps"]]


def same_run(plan: dict, run_id: str) -> str:
    """The plan as text with its run id (a new run's own name, part of its paths) made neutral."""
    return json.dumps(plan, sort_keys=True).replace(run_id, "<run>")


def test_run_json_records_what_reproduces_the_run(finished):
    folder, dataset, _ = finished
    data = json.loads((folder / "run.json").read_text())
    assert data["image"] == {"ref": PINNED, "digest": "sha256:" + "ab" * 32, "source": "reference"}
    assert data["preset"]["content"] == (Path(__file__).parents[1] / "presets" / f"{PRESET}.toml").read_text()
    assert data["preset"]["overrides"] == list(OVERRIDES)
    files = {f["path"]: f["sha256"] for f in data["dataset"]["files"]}
    media = sorted(p for p in dataset.rglob("*") if p.is_file())
    assert len(files) == len(media) == 12
    clip = next(p for p in media if p.suffix == ".txt")
    assert files[str(clip.relative_to(dataset))] == provenance.hashlib.sha256(clip.read_bytes()).hexdigest()
    assert data["dataset"]["sha256"] == provenance.files_digest(data["dataset"]["files"])
    assert {w["repo"] + ":" + w["path"] for w in data["weights"]} >= {
        "Comfy-Org/Wan_2.1_ComfyUI_repackaged:split_files/diffusion_models/wan2.1_t2v_1.3B_bf16.safetensors"}


def test_image_record_is_honest_about_what_pins_it():
    image_id = "sha256:" + "cd" * 32
    assert provenance.image_record("lora-gym-wan21:0.1.0", image_id)["source"] == "engine"
    assert provenance.image_record("ghcr.io/x/y:1", None) == {"ref": "ghcr.io/x/y:1", "digest": None,
                                                              "source": "unresolved"}
    assert provenance.image_record("ghcr.io/x/y:1@sha256:12", None)["source"] == "unresolved"  # not a digest
    assert provenance.image_record("", "") is None


def test_from_a_run_folder_plans_exactly_the_original_run(finished, capsys):
    folder, dataset, _ = finished
    original = plan_of(capsys, "--preset", PRESET, "--dataset", str(dataset), *sum((["--set", o] for o in OVERRIDES),
                                                                                   []))
    again = plan_of(capsys, "--from", str(folder), "--dataset", str(dataset))
    assert again["run_id"] != folder.name  # a new run, never the old folder again
    assert same_run(again, again["run_id"]) == same_run(original, original["run_id"])
    argv = [s["argv"] for s in again["steps"]]
    assert any("--learning_rate" in a and "5e-05" in a for a in argv)  # the recorded overrides came along


def test_from_a_registry_id_finds_its_dataset_and_refuses_a_changed_one(finished, tmp_path, capsys):
    _, source, _ = finished
    dataset = tmp_path / "dataset"
    shutil.copytree(source, dataset)
    job = prepare(PRESET, None, OVERRIDES, dataset)
    runs.save({"run_id": "wan21-reg-1", "backend": "modal", "preset": PRESET, "created_at": "2026-12-01T00:00:00",
               "reproduce": rerun.reproduce_entry(job, str(dataset), PINNED)})
    original = plan_of(capsys, "--preset", PRESET, "--dataset", str(dataset), *sum((["--set", o] for o in OVERRIDES),
                                                                                   []))
    launch = plan_of(capsys, "--from", "wan21-reg-1")  # no --dataset: the registry knows the folder
    assert launch["backend"] == "modal" and launch["launch"]["image"] == PINNED  # its backend, its pinned image
    again = launch["plan"]
    assert same_run(again, again["run_id"]) == same_run(original, original["run_id"])

    first, second = sorted(p for p in dataset.rglob("*") if p.suffix in (".png", ".jpg", ".mp4"))[:2]
    first.with_suffix(".txt").write_text("a different caption\n")
    second.unlink()
    second.with_suffix(".txt").rename(dataset / "new.txt")
    shutil.copy(first, dataset / f"new{first.suffix}")
    assert main(["run", "--from", "wan21-reg-1", "--dry-run"]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0] == (f"error: the dataset '{dataset}' changed since run wan21-reg-1 (1 changed, "
                                      f"2 added, 2 removed): restore it, or pass --dataset '{dataset}' to train on it "
                                      "as it is now")
    rel = lambda p: str(p.relative_to(dataset))  # noqa: E731
    assert lines[1:] == [f"error: changed: {rel(first.with_suffix('.txt'))}", *sorted(
                         ["error: added: new.txt", f"error: added: new{first.suffix}"]), *sorted(
                             f"error: removed: {rel(p)}" for p in (second, second.with_suffix(".txt")))]

    again, notes = plan_and_notes(capsys, "--from", "wan21-reg-1", "--dataset", str(dataset))  # as it is now
    assert again["plan"]["dataset_config"] != original["dataset_config"]  # its caches are keyed by the content now
    assert "differs from run wan21-reg-1's (1 changed, 2 added, 2 removed)" in notes


def test_from_takes_set_and_refuses_preset_and_unknown_runs(finished, capsys):
    folder, dataset, _ = finished
    again = plan_of(capsys, "--from", str(folder / "run.json"), "--dataset", str(dataset), "--set",
                    "train.max_train_epochs=3")
    train = next(s["argv"] for s in again["steps"] if s["name"] == "train")
    assert train[train.index("--max_train_epochs") + 1] == "3"
    assert main(["run", "--from", str(folder), "--preset", PRESET, "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: --from takes the preset and expert")
    assert main(["run", "--from", "no-such-run", "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith("error: no run 'no-such-run'")
    assert main(["run", "--from", str(folder), "--dry-run"]) == 2  # a run folder does not say where its dataset is
    assert "add --dataset DIR" in capsys.readouterr().err


def test_a_changed_registry_preset_is_run_from_its_recorded_text(finished, tmp_path, capsys):
    folder, dataset, _ = finished
    data = json.loads((folder / "run.json").read_text())
    mine = tmp_path / "mine.toml"
    mine.write_text(data["preset"]["content"])
    data["preset"]["origin"] = str(mine)
    (tmp_path / "run.json").write_text(json.dumps(data))
    mine.write_text(data["preset"]["content"].replace("learning_rate", "# learning_rate"))  # edited since
    again, notes = plan_and_notes(capsys, "--from", str(tmp_path / "run.json"), "--dataset", str(dataset))
    assert f"note: preset {mine} is not what run" in notes and mine.read_text() != data["preset"]["content"]
    original = plan_of(capsys, "--preset", PRESET, "--dataset", str(dataset), *sum((["--set", o] for o in OVERRIDES),
                                                                                   []))
    assert argv_of(again) == argv_of(original) and again["preset_sha256"] == original["preset_sha256"]
    assert Path(again["preset_origin"]).read_text() == data["preset"]["content"]  # the recorded text, kept aside


def test_remember_adds_the_reproduce_entry_to_a_backends_record(finished, tmp_path):
    _, dataset, _ = finished
    from launcher.backends import LaunchOptions

    job = prepare(PRESET, None, OVERRIDES, dataset)
    options = LaunchOptions(dataset=str(dataset), image=PINNED)
    rerun.remember(job, options)  # no record: the backend made none, nothing is created
    assert not (runs.home() / "runs" / f"{job.plan.run_id}.json").exists()
    runs.save({"run_id": job.plan.run_id, "backend": "runpod", "created_at": "2026-12-01T00:00:00"})
    rerun.remember(job, options)
    entry = runs.load(job.plan.run_id)["reproduce"]
    assert entry["image"]["digest"] == "sha256:" + "ab" * 32 and entry["dataset"]["path"] == str(dataset)
    assert entry["preset"]["overrides"] == list(OVERRIDES) and len(entry["dataset"]["files"]) == 12


# --- report.html at every checkpoint ------------------------------------------------------------------------

def test_the_report_is_rewritten_at_every_checkpoint(finished):
    folder, _, stdout = finished
    updates = re.findall(r"report: .*report\.html \(updated at checkpoint (\S+)\)", stdout)
    assert updates == [f"{PRESET}-000001.safetensors", f"{PRESET}-000002.safetensors"]  # the 3rd is the final
    assert (folder / "report.html").read_text().rstrip().endswith("</html>")
    assert not list(folder.glob(".report.html*"))  # no temporary file left


def test_a_checkpoint_line_writes_progress_and_the_report_of_a_run_in_progress(tmp_path):
    from lora_gym_entrypoint.main import write_report

    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r", "status": "running", "steps": []}))
    reports = []
    progress = ProgressFile(tmp_path / "progress.json", "r", interval=3600,
                            on_checkpoint=lambda saved: (write_report(tmp_path, saved), reports.append(
                                (tmp_path / "report.html").read_text())))
    progress.start("train")
    lines = re.split(r"[\r\n]", (Path(__file__).parent / "fixtures" / "musubi_train_output.txt").read_text())
    first = next(n for n, line in enumerate(lines) if line.startswith("saving checkpoint"))
    for line in lines[:first]:
        progress.line(line)
    assert reports == []
    progress.line(lines[first])
    assert len(reports) == 1 and 'id="loss"' in reports[0] and "running" in reports[0]
    assert json.loads((tmp_path / "progress.json").read_text())["current"]["checkpoint"] == "lora-000002.safetensors"
    for line in lines[first + 1:]:
        progress.line(line)
    assert len(reports) == 2


def test_report_write_replaces_the_page_whole(tmp_path, monkeypatch):
    from launcher import report

    (tmp_path / "run.json").write_text(json.dumps({"run_id": "r", "status": "running"}))
    (tmp_path / "report.html").write_text("the previous page")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((Path(src).read_text(), Path(dst).read_text()))
        real_replace(src, dst)

    monkeypatch.setattr(report.os, "replace", replace)
    report.write(tmp_path, {})
    [(new, old)] = seen
    assert old == "the previous page" and new.rstrip().endswith("</html>")  # whole before it takes the name
    assert (tmp_path / "report.html").read_text() == new
