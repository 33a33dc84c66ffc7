"""Live progress: musubi's recorded training output (tests/fixtures) parsed into progress.json."""

from __future__ import annotations

import json
import re

from conftest import ROOT
from test_entrypoint import Container

from launcher.core.progress import Progress, clock_seconds, describe
from lora_gym_entrypoint.progress import ProgressFile

FIXTURES = ROOT / "tests" / "fixtures"


def lines(name: str) -> list[str]:
    return re.split(r"[\r\n]", (FIXTURES / name).read_text(encoding="utf-8"))


def test_recorded_training_output_gives_epoch_step_loss_and_checkpoint():
    progress, text = Progress(), (FIXTURES / "musubi_train_output.txt").read_text(encoding="utf-8")
    changed = [line for line in lines("musubi_train_output.txt") if progress.feed(line)]
    total = int(re.search(r"total optimization steps / \S+: (\d+)", text)[1])
    last_loss = float(text[text.rindex("avr_loss=") + 9:].split("]")[0])
    assert (progress.epoch, progress.epochs, progress.step, progress.steps) == (4, 4, total, total)
    assert progress.loss_avg == last_loss and progress.checkpoint == "lora.safetensors"
    assert progress.it_per_s > 1 and progress.eta_s == 0
    assert [s for s, _ in progress.history] == list(range(1, total + 1))  # one point per step, newest loss kept
    assert not any(line.startswith(("override steps", "running training")) for line in changed)


def test_slow_steps_are_read_as_seconds_per_iteration():
    progress = Progress()
    for line in lines("musubi_train_output_slow.txt"):
        progress.feed(line)
    text = (FIXTURES / "musubi_train_output_slow.txt").read_text(encoding="utf-8")
    seconds_per_step = float(re.findall(r"([\d.]+)s/it", text)[-1])
    assert abs(progress.it_per_s - 1 / seconds_per_step) < 1e-9
    assert "s/it" in describe({"stage": "train", **progress.as_dict()})


def test_a_bar_before_its_first_rate_and_other_lines_change_nothing_wrong():
    progress = Progress()
    assert progress.feed("steps:   0%|          | 0/20 [00:00<?, ?it/s]")
    assert (progress.step, progress.it_per_s, progress.eta_s, progress.loss_avg) == (0, None, None, None)
    assert not progress.feed("INFO:musubi_tuner.wan_train_network:Loading DiT model from /weights/dit.safetensors")
    assert clock_seconds("1:02:03") == 3723 and clock_seconds("?") is None


def test_describe_reads_like_a_status_line():
    line = describe({"stage": "train-high", "epoch": 3, "epochs": 10, "step": 11, "steps": 30, "it_per_s": 0.5,
                     "loss_avg": 0.08765, "eta_s": 3725})
    assert line == "train-high: epoch 3/10, step 11/30 (36%), 2.00 s/it, loss 0.08765, ETA 1:02:05"


def test_progress_file_is_written_at_most_every_interval(tmp_path):
    now = [0.0]
    path = tmp_path / "progress.json"
    progress = ProgressFile(path, "r", interval=3.0, clock=lambda: now[0])
    progress.start("train-low")
    output = lines("musubi_train_output.txt")
    for number, line in enumerate(line for line in output if not line.startswith("saving checkpoint")):
        now[0] = number * 0.01  # every line within the first 3 s: nothing but the start is written
        progress.line(line)
    assert json.loads(path.read_text())["current"] == {}
    progress.line(next(line for line in output if line.startswith("saving checkpoint")))  # a save: written at once
    assert json.loads(path.read_text())["current"]["checkpoint"] == "lora-000002.safetensors"
    now[0] = 10.0
    progress.line("epoch 4/4")
    written = json.loads(path.read_text())
    assert written["stage"] == "train-low" and written["current"]["step"] == 20
    assert len(written["trainings"]["train-low"]["history"]) == 20
    progress.end("succeeded")
    assert json.loads(path.read_text())["status"] == "succeeded"


def test_a_run_writes_progress_json_with_each_trainings_loss_curve(tmp_path, dataset):
    box = Container(tmp_path, dataset)
    box.stock_weights("wan22-t2v-vanilla", "both")
    env = box.env("wan22-t2v-vanilla", "both", LORA_GYM_SET="train.max_train_epochs=4 samples.enabled=false")
    result = box.run(env)
    assert result.returncode == 0, result.stderr + result.stdout
    [run_dir] = box.runs()
    data = json.loads((run_dir / "progress.json").read_text())
    assert data["status"] == "succeeded" and data["stage"] == "train-low"
    for name in ("train-high", "train-low"):
        training = data["trainings"][name]
        assert (training["epoch"], training["epochs"], training["steps"]) == (4, 4, 12)
        losses = [loss for _, loss in training["history"]]
        assert len(losses) == 12 and losses[-1] < losses[0]  # the fake's loss falls
