"""The container entrypoint end to end, with the musubi-tuner and accelerate test doubles in tests/fakes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAKES, clean_env
from fakes import tiny_wan

from launcher.core.job import prepare
from launcher.core.plan import ContainerPaths
from lora_gym_entrypoint import cachelock


class Container:
    """One fake container: its volumes in tmp_path and the LORA_GYM_* environment that points at them."""

    def __init__(self, tmp_path: Path, dataset: Path):
        self.root = tmp_path
        self.dataset = dataset
        self.output, self.cache, self.weights = (tmp_path / n for n in ("output", "cache", "weights"))
        self.log = tmp_path / "musubi-calls.jsonl"

    @property
    def paths(self) -> ContainerPaths:
        return ContainerPaths(dataset=str(self.dataset), output=str(self.output), cache=str(self.cache),
                              weights=str(self.weights), musubi=str(FAKES / "fake_musubi_tuner"),
                              python=sys.executable)

    def env(self, preset: str, expert: str = "", **extra: str) -> dict[str, str]:
        env = clean_env(LORA_GYM_PRESET=preset, LORA_GYM_EXPERT=expert, LORA_GYM_DATASET_DIR=str(self.dataset),
                        LORA_GYM_OUTPUT_DIR=str(self.output), LORA_GYM_CACHE_DIR=str(self.cache),
                        LORA_GYM_WEIGHTS_DIR=str(self.weights), LORA_GYM_MUSUBI_DIR=self.paths.musubi,
                        LORA_GYM_PYTHON=sys.executable, FAKE_MUSUBI_LOG=str(self.log))
        env["PATH"] = f"{FAKES / 'bin'}{os.pathsep}{env['PATH']}"
        return env | extra

    def stock_weights(self, preset: str, expert: str | None = None) -> None:
        """Stand-in weight files at every path the plan needs: tiny real DiTs (the trainer double writes LoRAs
        for them, the entrypoint checks every key against them) and Lightning LoRAs, bytes for the rest."""
        plan = prepare(preset, expert, (), self.dataset, run_id="x", paths=self.paths).plan
        for weight in plan.weights:
            path = Path(weight.container_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if weight.role.startswith(("dit", "lightning-")):
                write_tiny_wan(path, lora=weight.role.startswith("lightning-"), i2v=preset.startswith("wan21-i2v"))
            else:
                path.write_bytes(b"stand-in " + weight.role.encode())

    def run(self, env, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "lora_gym_entrypoint", *args], env=env, text=True,
                              capture_output=True, timeout=120)

    def calls(self) -> list[dict]:
        return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    def runs(self) -> list[Path]:
        return sorted(p for p in self.output.iterdir()) if self.output.exists() else []


def write_tiny_wan(path: Path, lora: bool, i2v: bool = False) -> None:
    """A 2-block Wan DiT (fp16, the real key names) or a matching lightx2v-style rank-2 LoRA."""
    if lora:
        tiny_wan.write_lightning_lora(path)
    else:
        tiny_wan.write_dit(path, i2v=i2v)


@pytest.fixture
def box(tmp_path, dataset) -> Container:
    return Container(tmp_path, dataset)


def test_full_run_writes_lora_and_manifest(box):
    box.stock_weights("wan21-i2v-720p")
    result = box.run(box.env("wan21-i2v-720p"))
    assert result.returncode == 0, result.stderr + result.stdout
    [run_dir] = box.runs()
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["exit_code"] == 0
    assert [s["name"] for s in manifest["steps"]] == ["cache-latents", "cache-text-encoder", "train", "dit-keys", *(
        f"samples-e{e:06d}" for e in (10, 20, 30, 40, 50))]  # samples after training (tests/test_samples.py)
    assert all(s["exit_code"] == 0 for s in manifest["steps"])
    outputs = {o["path"]: o for o in manifest["outputs"]}
    assert len(outputs["wan21-i2v-720p.safetensors"]["sha256"]) == 64
    assert "wan21-i2v-720p-000005.safetensors" in outputs  # musubi's epoch checkpoints (every 5 of 50)
    assert manifest["preset"]["name"] == "wan21-i2v-720p" and len(manifest["preset"]["sha256"]) == 64
    assert (run_dir / "dataset.toml").read_text().startswith("[general]")
    assert "[cache-latents] caching latents: 3/3" in result.stdout  # \r progress became lines
    latents = box.calls()[0]
    assert latents["script"] == "wan_cache_latents" and "--i2v" in latents["argv"] and "--clip" in latents["argv"]


def test_second_run_reuses_caches_and_never_overwrites(box):
    box.stock_weights("wan21-t2v-14b")
    env = box.env("wan21-t2v-14b", LORA_GYM_RUN_ID="")
    assert box.run(env).returncode == 0
    second = box.run(env)
    assert second.returncode == 0, second.stderr
    assert "cache-latents: skipped" in second.stdout and "cache-text-encoder: skipped" in second.stdout
    assert [c["script"] for c in box.calls()].count("wan_cache_latents") == 1
    assert len(box.runs()) == 2  # a new run folder each time


def test_second_expert_reuses_first_experts_caches(box):
    box.stock_weights("wan22-t2v-vanilla", "both")
    off = {"LORA_GYM_SET": "samples.enabled=false"}
    assert box.run(box.env("wan22-t2v-vanilla", "high", **off)).returncode == 0
    low = box.run(box.env("wan22-t2v-vanilla", "low", **off))
    assert low.returncode == 0, low.stderr
    assert [c["script"] for c in box.calls()] == [
        "wan_cache_latents", "wan_cache_text_encoder_outputs", "wan_train_network", "wan_train_network"]


def test_failing_step_stops_the_run_with_its_exit_code(box):
    box.stock_weights("wan21-t2v-14b")
    result = box.run(box.env("wan21-t2v-14b", FAKE_MUSUBI_FAIL="wan_cache_text_encoder_outputs"))
    assert result.returncode == 3
    manifest = json.loads((box.runs()[0] / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["exit_code"] == 3
    assert [(s["name"], s["exit_code"]) for s in manifest["steps"]] == [("cache-latents", 0),
                                                                        ("cache-text-encoder", 3)]
    assert "wan_train_network" not in [c["script"] for c in box.calls()]
    assert not list(box.cache.rglob(".lora-gym-text.ok")) and list(box.cache.rglob(".lora-gym-latents.ok"))


def test_sigterm_is_forwarded_and_no_further_step_starts(box):
    box.stock_weights("wan21-t2v-14b")
    env = box.env("wan21-t2v-14b", FAKE_MUSUBI_HANG="wan_cache_latents")
    proc = subprocess.Popen([sys.executable, "-m", "lora_gym_entrypoint"], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines.append(proc.stdout.readline())
        if lines[-1].strip().endswith("ready"):
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "got signal 15" in rest
    assert [c["script"] for c in box.calls()] == ["wan_cache_latents"]
    assert not list(box.cache.rglob(".lora-gym-latents.ok"))  # interrupted caches are not marked valid
    manifest = json.loads((box.runs()[0] / "run.json").read_text())
    assert manifest["status"] == "stopped" and manifest["exit_code"] == 143


def test_lightning_merge_runs_before_training_and_is_cached(box):
    box.stock_weights("wan22-t2v-lightning", "high")
    env = box.env("wan22-t2v-lightning", "high", LORA_GYM_SET="samples.enabled=false")  # samples merge low too
    first = box.run(env)
    assert first.returncode == 0, first.stderr + first.stdout
    [merged] = list((box.cache / "lightning").glob("*/*.safetensors"))
    train = [c for c in box.calls() if c["script"] == "wan_train_network"][0]["argv"]
    assert train[train.index("--dit") + 1] == str(merged)
    second = box.run(env)
    assert "merge-lightning-high: skipped" in second.stdout
    next(box.cache.rglob(".lora-gym-merge.ok")).unlink()  # as if stopped after the file, before the marker
    third = box.run(env)
    assert third.returncode == 0 and "[merge-lightning-high]" in third.stdout, third.stderr


def test_missing_weights_fail_preflight_and_write_nothing(box):
    result = box.run(box.env("wan21-t2v-14b"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: weight file ") for line in lines)
    assert "Traceback" not in result.stderr and box.runs() == []


def test_lock_size_mismatch_fails_preflight(box, tmp_path):
    box.stock_weights("wan21-t2v-1.3b")
    plan = prepare("wan21-t2v-1.3b", None, (), box.dataset, run_id="x", paths=box.paths).plan
    files = [{"repo": w.repo, "path": w.path, "revision": "0" * 40, "size": 12345, "sha256": "0" * 64}
             for w in plan.weights]
    lock = tmp_path / "lock.json"
    lock.write_text(json.dumps({"files": files}))
    result = box.run(box.env("wan21-t2v-1.3b", LORA_GYM_WEIGHTS_LOCK=str(lock)))
    assert result.returncode == 2 and "the lock says 12345" in result.stderr


def test_bad_environment_is_a_one_line_error(box):
    result = box.run(box.env("wan22-t2v-lightning"))  # no expert
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: wan22-t2v-lightning is a Wan 2.2 preset with two experts: add --expert high, low or both"]


@pytest.mark.parametrize("extra, message", [
    ({"LORA_GYM_STAGE": "caches"}, "error: LORA_GYM_STAGE='caches' is not a stage: use all, cache, train or samples"),
    ({"LORA_GYM_LOCK_TIMEOUT": "6h"}, "error: LORA_GYM_LOCK_TIMEOUT='6h' is not a number of seconds above 0"),
    ({"LORA_GYM_CACHE_LOCK": "flock"}, "error: LORA_GYM_CACHE_LOCK='flock' is not a lock kind: use file, or none"),
])
def test_bad_stage_or_lock_setting_is_a_one_line_error(box, extra, message):
    result = box.run(box.env("wan21-t2v-14b", **extra))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(message)


def test_dry_run_prints_the_plan_and_writes_nothing(box):
    result = box.run(box.env("wan21-t2v-14b", LORA_GYM_DRY_RUN="1", LORA_GYM_SET="train.max_train_epochs=7"))
    assert result.returncode == 0, result.stderr
    assert "--max_train_epochs 7" in result.stdout
    assert box.runs() == [] and not box.cache.exists()


def test_lora_gym_set_takes_a_video_entry_by_name_as_the_launcher_does(box):
    result = box.run(box.env("wan21-t2v-14b", LORA_GYM_DRY_RUN="1",
                             LORA_GYM_SET="dataset.videos.uniform.resolution=640x368"))
    assert result.returncode == 0, result.stderr
    assert re.search(r"videos +\S+ +640x368, 45 frames \(uniform", result.stdout)
    wrong = box.run(box.env("wan21-t2v-14b", LORA_GYM_DRY_RUN="1", LORA_GYM_SET="dataset.videos.nope.num_repeats=2"))
    assert wrong.returncode == 2 and wrong.stderr.strip().splitlines() == [
        "error: dataset.videos.nope.num_repeats: no dataset.videos entry is named 'nope': use one of head, uniform or "
        "an index from 0"]


def test_arguments_are_executed_instead_of_the_job(box):
    result = box.run(box.env("wan21-t2v-14b"), sys.executable, "-c", "print('custom command')")
    assert result.returncode == 0 and result.stdout.strip() == "custom command"


def test_manifest_holds_image_labels_and_no_secret_values(box, tmp_path):
    box.stock_weights("wan21-t2v-14b")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"org.opencontainers.image.version": "0.1.0"}))
    secret = "hf_TopSecretValue42"
    env = box.env("wan21-t2v-14b", HF_TOKEN=secret, LORA_GYM_IMAGE_LABELS=str(labels),
                  LORA_GYM_SET=f"output_name={secret}")
    assert box.run(env).returncode == 0
    text = (box.runs()[0] / "run.json").read_text()
    assert json.loads(text)["image_labels"] == {"org.opencontainers.image.version": "0.1.0"}
    assert secret not in text


def test_cache_stage_runs_only_the_cache_and_merge_steps(box):
    box.stock_weights("wan22-t2v-lightning", "both")
    result = box.run(box.env("wan22-t2v-lightning", "both", LORA_GYM_STAGE="cache"))
    assert result.returncode == 0, result.stderr + result.stdout
    assert [c["script"] for c in box.calls()] == ["wan_cache_latents", "wan_cache_text_encoder_outputs"]
    manifest = json.loads((box.runs()[0] / "run.json").read_text())
    assert [s["name"] for s in manifest["steps"]] == ["cache-latents", "cache-text-encoder", "merge-lightning-high",
                                                      "merge-lightning-low", "dit-keys-high", "dit-keys-low"]
    assert manifest["status"] == "succeeded" and manifest["stage"] == "cache"


def test_train_stage_needs_the_caches_then_runs_only_training(box):
    box.stock_weights("wan22-t2v-lightning", "both")
    refused = box.run(box.env("wan22-t2v-lightning", "high", LORA_GYM_STAGE="train"))
    assert refused.returncode == 2 and box.runs() == [] and box.calls() == []
    assert refused.stderr.strip().splitlines() == [
        "error: LORA_GYM_STAGE=train needs the output of cache-latents, cache-text-encoder, merge-lightning-high: "
        "run LORA_GYM_STAGE=cache first with the same preset, expert, overrides, dataset and cache volume"]
    assert box.run(box.env("wan22-t2v-lightning", "both", LORA_GYM_STAGE="cache")).returncode == 0
    trained = box.run(box.env("wan22-t2v-lightning", "low", LORA_GYM_STAGE="train"))
    assert trained.returncode == 0, trained.stderr + trained.stdout
    # The samples follow the training; the high expert's merge they need is already cached (stage cache).
    assert [c["script"] for c in box.calls()][2:] == ["wan_train_network"] + ["wan_generate_video"] * 5
    manifest = json.loads((sorted(box.runs(), key=lambda p: p.stat().st_mtime)[-1] / "run.json").read_text())
    assert [s["name"] for s in manifest["steps"]][:2] == ["train-low", "merge-lightning-high"]
    assert manifest["steps"][1]["status"] == "skipped" and manifest["samples"]["status"] == "succeeded"


def test_two_containers_on_one_cache_volume_cache_once(box):
    box.stock_weights("wan22-t2v-vanilla", "both")
    procs = [subprocess.Popen([sys.executable, "-m", "lora_gym_entrypoint"], text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT,
                              env=box.env("wan22-t2v-vanilla", expert, LORA_GYM_RUN_ID=expert, FAKE_MUSUBI_SLEEP="1"))
             for expert in ("high", "low")]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    scripts = [c["script"] for c in box.calls()]
    assert scripts.count("wan_cache_latents") == 1 and scripts.count("wan_cache_text_encoder_outputs") == 1
    assert scripts.count("wan_train_network") == 2
    assert any("waiting for" in out and "held by run" in out for out in outputs), outputs
    assert any("skipped, another run cached these inputs while this one waited" in out for out in outputs)
    assert not list((box.cache / "locks").iterdir())  # every lock released


# --- cachelock ------------------------------------------------------------------------------------------

def test_lock_waits_for_a_live_holder(tmp_path):
    path = tmp_path / "a.lock"
    held = cachelock.acquire(path, cachelock.new_owner("first"), 3600, print)
    lines = []
    with pytest.raises(cachelock.Busy, match="run first on"):
        cachelock.acquire(path, cachelock.new_owner("second"), 3600, lines.append, give_up_after=0.3)
    assert lines and lines[0].startswith("waiting for a.lock: held by run first")
    with pytest.raises(cachelock.Cancelled):
        cachelock.acquire(path, cachelock.new_owner("second"), 3600, print, cancelled=lambda: True)
    held.release()
    assert not path.exists()
    cachelock.acquire(path, cachelock.new_owner("second"), 3600, print).release()


def test_lock_of_a_dead_process_on_this_machine_is_broken(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    owner = cachelock.new_owner("dead") | {"pid": int(gone.stdout)}
    (tmp_path / "a.lock").write_text(json.dumps(owner))
    lines = []
    cachelock.acquire(tmp_path / "a.lock", cachelock.new_owner("next"), 3600, lines.append).release()
    assert lines == [f"breaking the stale lock {tmp_path / 'a.lock'} of {cachelock.describe(owner)}"]


def test_lock_of_another_machine_is_broken_only_after_the_timeout(tmp_path):
    path = tmp_path / "a.lock"
    path.write_text(json.dumps(cachelock.new_owner("far") | {"machine": "elsewhere", "host": "elsewhere"}))
    with pytest.raises(cachelock.Busy):
        cachelock.acquire(path, cachelock.new_owner("next"), 60, print, give_up_after=0.2)
    os.utime(path, (time.time() - 61, time.time() - 61))  # no heartbeat for 61 s
    cachelock.acquire(path, cachelock.new_owner("next"), 60, print).release()


def test_holder_heartbeats_and_never_removes_a_lock_it_lost(tmp_path, monkeypatch):
    monkeypatch.setattr(cachelock, "HEARTBEAT_S", 0.05)
    path = tmp_path / "a.lock"
    lock = cachelock.acquire(path, cachelock.new_owner("me"), 3600, print)
    os.utime(path, (0, 0))
    time.sleep(0.3)
    assert time.time() - path.stat().st_mtime < 5
    path.write_text(json.dumps(cachelock.new_owner("someone who broke it")))
    lock.release()
    assert json.loads(path.read_text())["run_id"] == "someone who broke it"
