# ruff: noqa: F811  (the fixtures imported from test_runpod_backend are test arguments here)
"""`launcher sweep --backend runpod` against the fake RunPod API (every request checked against RunPod's OpenAPI
document) and moto's S3: the cache pod first, the wait for it, then one pod per training on the same volume."""

from __future__ import annotations

import json
import threading
import time

import pytest
from test_runpod_backend import (  # noqa: F401  (fixtures)
    HF_SECRET_VALUE,
    S3_SECRET,
    fake,
    one_error,
    pod_exits,
    registry,
    volume,
    write_run_output,
)

from launcher import runs
from launcher.backends import runpod_s3
from launcher.cli.main import main
from launcher.sweep import runpod_sweep


def sweep_cli(dataset, volume_id, *extra):
    return ["sweep", "--preset", "wan21-t2v-1.3b", "--dataset", str(dataset), "--grid",
            "train.learning_rate=5e-5,8e-5,1e-4", "--backend", "runpod", "--volume", volume_id, *extra]


def finish_cache_pod(fake, volume_id, exit_code):
    """The cache pod's side, once it exists: its run.json on the volume, then it terminates itself."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        cache = [(pid, p) for pid, p in list(fake.pods.items()) if p["env"].get("LORA_GYM_STAGE") == "cache"]
        if cache:
            pod_id, pod = cache[0]
            write_run_output(volume_id, pod["env"]["LORA_GYM_RUN_ID"], exit_code)
            pod_exits(fake, pod_id, exit_code)
            return
        time.sleep(0.05)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(runpod_sweep, "POLL_S", 0.05)


def start_cache_side(fake, volume_id, exit_code=0):
    thread = threading.Thread(target=finish_cache_pod, args=(fake, volume_id, exit_code), daemon=True)
    thread.start()
    return thread


def test_dry_run_shows_one_cache_pod_then_a_pod_per_run(dataset, capsys):
    assert main(sweep_cli(dataset, "vol-x", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "3 runs of wan21-t2v-1.3b, 1 cache pass" in out
    assert out.count("# POST /pods (cache:") == 1 and out.count("# POST /pods (train:") == 3
    assert out.index("(cache:") < out.index("once the cache pass pods ended") < out.index("(train:")


def test_sweep_caches_in_one_pod_then_starts_a_pod_per_run_on_one_volume(dataset, volume, fake, quick, capsys):
    side = start_cache_side(fake, volume)
    assert main(sweep_cli(dataset, volume, "--no-check")) == 0
    side.join()
    stages = [b["env"]["LORA_GYM_STAGE"] for b in fake.created]
    assert stages == ["cache", "train", "train", "train"]  # the trainings only after the cache pod ended
    assert {b["mounts"]["network"][0]["volumeId"] for b in fake.created} == {volume}
    assert all(b["env"]["LORA_GYM_TERMINATE_POD"] == "1" for b in fake.created)
    sets = [b["env"]["LORA_GYM_SET"] for b in fake.created[1:]]
    assert sets == ["train.learning_rate=5e-5", "train.learning_rate=8e-5", "train.learning_rate=1e-4"]
    [record] = [r for r in runs.all_runs() if r.get("kind") == "sweep"]
    text = json.dumps(record) + capsys.readouterr().err
    assert HF_SECRET_VALUE not in text and S3_SECRET not in text
    assert [p["stage"] for p in record["pods"]] == ["cache", "train", "train", "train"]
    # status: one row per run from each run.json on the volume (only the first run has one here)
    first = record["runs"][0]["run_id"]
    runpod_s3.client("US-KS-2").put_object(Bucket=volume, Key=f"lora-gym/output/{first}/run.json", Body=json.dumps(
        {"status": "running", "started_at": "2026-11-29T00:00:00+00:00", "ended_at": "2026-11-29T01:00:00+00:00"}))
    assert main(["status", record["run_id"]]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 1 + 1 + 3 and sum("not started" in r for r in rows) == 2
    running = next(r for r in rows if r.startswith(first + " "))
    assert "running" in running and f"${record['usd_per_hour']:.2f}" in running  # one hour at the pod's price
    # logs: every pod's lines, prefixed by its run id
    for pod in record["pods"]:
        fake.log(pod["id"], f"[train] hello from {pod['label']}")
    assert main(["logs", record["run_id"]]) == 0
    out = capsys.readouterr().out
    assert all(f"[{p['label']}] [train] hello from {p['label']}" in out for p in record["pods"])
    # stop ends every pod of the sweep
    assert main(["stop", record["run_id"]]) == 0
    assert all(fake.pods[p["id"]]["status"] == "TERMINATED" for p in record["pods"])


def test_a_failed_cache_pass_starts_no_training_pod(dataset, volume, fake, quick, capsys):
    side = start_cache_side(fake, volume, exit_code=2)
    assert main(sweep_cli(dataset, volume, "--no-check")) == 2
    side.join()
    err = capsys.readouterr().err
    assert [b["env"]["LORA_GYM_STAGE"] for b in fake.created] == ["cache"]
    assert err.strip().splitlines()[-1].startswith("error: the cache pass") and "Traceback" not in err


def test_max_cost_counts_every_run_before_any_pod(dataset, volume, fake, capsys):
    assert main(sweep_cli(dataset, volume, "--max-cost", "0.1")) == 2
    err = capsys.readouterr().err
    assert "estimate: 3 runs + 1 cache pass" in err and "over --max-cost 0.1" in err
    assert len(err.splitlines()) == 1 and fake.created == []


@pytest.mark.parametrize("argv", [["--dry-run"], ["--no-check"]])
def test_a_sweep_with_an_image_runpod_cannot_pull_is_one_line_and_starts_nothing(dataset, volume, fake, capsys,
                                                                                 monkeypatch, argv):
    monkeypatch.delenv("LORA_GYM_REGISTRY")
    assert main(sweep_cli(dataset, volume, *argv)) == 2
    printed = capsys.readouterr()
    assert one_error(printed.err).startswith("error: RunPod pulls the image from a registry")
    assert not fake.requests and not runpod_s3.list_objects(runpod_s3.client("US-KS-2"), volume, "lora-gym")
    assert "POST /pods" not in printed.out
