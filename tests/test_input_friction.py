"""What a new user tripped over: copies named after the original, --max-hours, one JSON document per dry run,
dry runs that re-hash every file, and a run.json that said "running" after the entrypoint died."""

from __future__ import annotations

import io
import json
import os
import tomllib

import pytest
from conftest import EXAMPLE_DATASET, FAKES

from launcher.cli.main import main as launcher_main
from launcher.core import hashes
from launcher.core.dataset import scan_dataset
from lora_gym_entrypoint import main as entrypoint


def test_a_copied_preset_is_named_after_its_file(tmp_path, capsys):
    target = tmp_path / "Zorbix Style v2.toml"
    assert launcher_main(["presets", "cp", "wan22-t2v-lightning", str(target)]) == 0
    data = tomllib.loads(target.read_text())
    assert data["name"] == "zorbix-style-v2"
    assert launcher_main(["run", "--dry-run", "--format", "json", "--preset", str(target), "--expert", "high",
                          "--dataset", str(EXAMPLE_DATASET)]) == 0
    plan = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert plan["run_id"].startswith("zorbix-style-v2-high-")


def test_force_replaces_a_symlink_and_never_the_file_it_points_to(tmp_path):
    mine = tmp_path / "mine.toml"
    mine.write_text("# my own preset\n")
    (tmp_path / "link.toml").symlink_to(mine)
    assert launcher_main(["presets", "cp", "wan21-t2v-14b", str(tmp_path / "link.toml")]) == 2
    assert launcher_main(["presets", "cp", "wan21-t2v-14b", str(tmp_path / "link.toml"), "--force"]) == 0
    assert mine.read_text() == "# my own preset\n"
    assert not (tmp_path / "link.toml").is_symlink() and "link" in (tmp_path / "link.toml").read_text()


def _runpod_dry_json(capsys, *extra: str) -> dict:
    code = launcher_main(["run", "--dry-run", "--format", "json", "--preset", "wan21-t2v-14b", "--dataset",
                          str(EXAMPLE_DATASET), "--backend", "runpod", "--image", "ghcr.io/you/lora-gym-wan21:0.1.0",
                          *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), err


def test_max_hours_lowers_the_limit_quietly_and_raises_it_only_saying_so(capsys):
    lower, err = _runpod_dry_json(capsys, "--max-hours", "3")
    assert lower["launch"]["hours_limit"] == 3 and err == ""
    higher, err = _runpod_dry_json(capsys, "--max-hours", "30")
    assert higher["launch"]["hours_limit"] == 30
    assert err == "note: --max-hours 30 raises the preset's time limit of 24 h\n"
    default, _ = _runpod_dry_json(capsys)
    assert default["launch"]["hours_limit"] == 24


@pytest.mark.parametrize("backend, extra, key", [
    ("local", ["--output", "OUT"], "argv"),
    ("modal", ["--image", "ghcr.io/you/lora-gym-wan21:0.1.0"], "calls"),
    ("runpod", ["--image", "ghcr.io/you/lora-gym-wan21:0.1.0"], "pods"),
])
def test_format_json_is_one_document_with_every_backend(backend, extra, key, tmp_path, capsys):
    extra = [str(tmp_path / "out") if e == "OUT" else e for e in extra]
    code = launcher_main(["run", "--dry-run", "--format", "json", "--preset", "wan21-t2v-14b", "--dataset",
                          str(EXAMPLE_DATASET), "--backend", backend, *extra])
    out = capsys.readouterr().out
    data = json.loads(out)  # the whole output: no comment lines around it
    assert code == 0 and data["backend"] == backend and key in data["launch"]
    assert data["plan"]["steps"] and data["plan"]["run_id"]


def test_runpod_dry_run_names_the_catalog_it_checked_against(capsys):
    data, _ = _runpod_dry_json(capsys, "--gpu", "NVIDIA H200")
    assert data["launch"]["gpu"]["id"] == "NVIDIA H200"
    assert data["launch"]["gpu"]["checked_against"].startswith("the GPU types table of RunPod's docs")
    unknown, _ = _runpod_dry_json(capsys, "--gpu", "Acme Quantum 9000")
    assert unknown["launch"]["gpu"]["checked_against"].startswith("nothing: 'Acme Quantum 9000' is not in")


def test_dataset_hashes_are_reused_until_a_file_changes(dataset):
    first = scan_dataset(dataset).dirs
    image = dataset / "images" / "zorbix_beach_wave.png"
    stat = image.stat()
    data = bytearray(image.read_bytes())
    data[-1] ^= 0xFF  # same size, same modification time: the cache answers, the file is not read
    image.write_bytes(bytes(data))
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scan_dataset(dataset).dirs == first
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert scan_dataset(dataset).dirs != first


def test_hashing_shows_progress_on_a_terminal_once_it_takes_a_while(dataset, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(hashes, "PROGRESS_AFTER_S", 0.0)
    scan_dataset(dataset)
    shown = terminal.getvalue()
    assert "hashing the dataset: 12/12 files" in shown and shown.endswith("\n")
    terminal.seek(0), terminal.truncate()
    monkeypatch.setattr(hashes, "PROGRESS_AFTER_S", 60.0)
    (dataset / "images" / "zorbix_beach_wave.txt").write_text("zorbix on a beach, waving")
    scan_dataset(dataset)
    assert terminal.getvalue() == ""


def _entrypoint_env(monkeypatch, tmp_path, dataset) -> None:
    for name, value in {"LORA_GYM_PRESET": "wan21-t2v-14b", "LORA_GYM_DATASET_DIR": str(dataset),
                        "LORA_GYM_OUTPUT_DIR": str(tmp_path / "output"), "LORA_GYM_CACHE_DIR": str(tmp_path / "cache"),
                        "LORA_GYM_WEIGHTS_DIR": str(tmp_path / "weights"),
                        "LORA_GYM_MUSUBI_DIR": str(FAKES / "fake_musubi_tuner")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(entrypoint, "preflight", lambda job, paths: None)  # weights are not the point here


def test_a_run_that_dies_of_an_input_error_is_marked_failed_with_the_reason(tmp_path, dataset, monkeypatch, capsys):
    _entrypoint_env(monkeypatch, tmp_path, dataset)

    def unreadable(ctx, steps):
        raise PermissionError(13, "Permission denied", "/dataset/images/zorbix_beach_wave.png")

    monkeypatch.setattr(entrypoint, "run_steps", unreadable)
    assert entrypoint.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: /dataset/images/zorbix_beach_wave.png: permission denied") and err.count("\n") == 1
    (run_json,) = (tmp_path / "output").glob("*/run.json")
    record = json.loads(run_json.read_text())
    assert record["status"] == "failed" and "PermissionError" in record["reason"] and record["ended_at"]


def test_entrypoint_debug_keeps_the_traceback_and_still_marks_the_run(tmp_path, dataset, monkeypatch):
    _entrypoint_env(monkeypatch, tmp_path, dataset)
    monkeypatch.setenv("LORA_GYM_DEBUG", "1")

    def broken(ctx, steps):
        raise ValueError("a malformed file")

    monkeypatch.setattr(entrypoint, "run_steps", broken)
    with pytest.raises(ValueError):
        entrypoint.main([])
    (run_json,) = (tmp_path / "output").glob("*/run.json")
    assert json.loads(run_json.read_text())["status"] == "failed"
