"""Resuming a training step (entrypoints/resume.py): the learning-rate schedule a resumed run follows, state
discovery, the resumed argv, and restarts end to end against the musubi-tuner test double.

The schedule tests replay musubi-tuner v0.3.4 with real torch objects: its get_lr_scheduler (name path, or
--lr_scheduler_type with --lr_scheduler_args), transformers' schedule lambdas (functools.partial, as
transformers builds them), and accelerate's load_state order (optimizer state, then scheduler state).
"""

from __future__ import annotations

import copy
import json
import math
import signal
import subprocess
import sys
import zipfile
from functools import partial
from pathlib import Path

import pytest
import torch
from test_entrypoint import Container

from launcher.core.job import prepare
from lora_gym_entrypoint import resume
from lora_gym_entrypoint.resume import SavedState

PER_EPOCH = 3  # steps per epoch in these tests (and the test double's default)
SETTINGS = ("train.save_state=true", "train.max_train_epochs=10", "train.save_every_n_epochs=2")


# --- the reference: transformers' lambdas and musubi's get_lr_scheduler -------------------------------

def polynomial(step, *, num_warmup_steps, num_training_steps, lr_end, power, lr_init):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    if step > num_training_steps:
        return lr_end / lr_init
    pct_remaining = 1 - (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
    return ((lr_init - lr_end) * pct_remaining**power + lr_end) / lr_init


def cosine(step, *, num_warmup_steps, num_training_steps, num_cycles=0.5):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def linear(step, *, num_warmup_steps, num_training_steps):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def constant_with_warmup(step, *, num_warmup_steps):
    return float(step) / float(max(1.0, num_warmup_steps)) if step < num_warmup_steps else 1.0


FUNCTIONS = {"get_polynomial_decay_schedule_with_warmup": polynomial, "get_cosine_schedule_with_warmup": cosine,
             "get_linear_schedule_with_warmup": linear}


def value(argv, flag):
    return argv[argv.index(flag) + 1] if flag in argv else None


def musubi_scheduler(optimizer, argv, max_train_steps):
    """trainer_base.get_lr_scheduler for the schedules a preset can choose."""
    kwargs = {}
    if "--lr_scheduler_args" in argv:
        rest = argv[argv.index("--lr_scheduler_args") + 1:]
        for arg in rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]:
            key, text = arg.split("=")
            kwargs[key] = eval(text)  # musubi: ast.literal_eval
    lr_init = optimizer.defaults["lr"]
    if value(argv, "--lr_scheduler_type"):
        function = FUNCTIONS[value(argv, "--lr_scheduler_type").rsplit(".", 1)[1]]
        lam = partial(function, **kwargs, **({"lr_init": lr_init} if function is polynomial else {}))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lam)
    name, warmup = value(argv, "--lr_scheduler"), int(value(argv, "--lr_warmup_steps") or 0)
    common = {"num_warmup_steps": warmup, "num_training_steps": max_train_steps}
    lam = {"polynomial": partial(polynomial, **common, power=float(value(argv, "--lr_scheduler_power") or 1),
                                 lr_init=lr_init, **kwargs),
           "cosine": partial(cosine, **common), "linear": partial(linear, **common),
           "constant_with_warmup": partial(constant_with_warmup, num_warmup_steps=warmup)}[name]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lam)


def train(argv, state=None, snapshot_after=None):
    """The lr of every optimizer step musubi takes for argv, and (optionally) its state after some epoch."""
    epochs = int(value(argv, "--max_train_epochs"))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(value(argv, "--learning_rate")))
    scheduler = musubi_scheduler(optimizer, argv, epochs * PER_EPOCH)
    if state is not None:  # accelerate's load_state: optimizer, then scheduler (unless left out)
        optimizer.load_state_dict(copy.deepcopy(state[0]))
        if state[1] is not None:
            scheduler.load_state_dict(copy.deepcopy(state[1]))
    lrs, saved = [], None
    for epoch in range(1, epochs + 1):
        for _ in range(PER_EPOCH):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        if epoch == snapshot_after:
            saved = (copy.deepcopy(optimizer.state_dict()), copy.deepcopy(scheduler.state_dict()))
    return lrs, saved


def planned_train_argv(dataset, *overrides):
    plan = prepare("wan21-t2v-1.3b", None, (*SETTINGS, *overrides), dataset, run_id="r").plan
    return [s for s in plan.steps if s.name == "train"][0].argv


SCHEDULES = [(), ("train.lr_warmup_steps=4",), ("train.lr_scheduler_power=1",), ("train.lr_scheduler=cosine",),
             ("train.lr_scheduler=linear", "train.lr_warmup_steps=2"),
             ("train.lr_scheduler=constant_with_warmup", "train.lr_warmup_steps=5")]


@pytest.mark.parametrize("overrides", SCHEDULES, ids=lambda o: " ".join(o) or "preset default (polynomial)")
@pytest.mark.parametrize("after_epoch", [2, 6, 10])
def test_resumed_run_follows_the_uninterrupted_schedule(dataset, overrides, after_epoch):
    planned = planned_train_argv(dataset, *overrides)
    reference, state = train(planned, snapshot_after=after_epoch)
    resumed = resume.resumed_argv(planned, SavedState(Path("/out/r/state"), after_epoch), len(reference))
    tail, _ = train(resumed, state=state)
    assert len(tail) == len(reference) - after_epoch * PER_EPOCH
    assert tail == pytest.approx(reference[after_epoch * PER_EPOCH:], rel=1e-12, abs=0)


def test_a_plain_resume_does_not(dataset):
    """What was measured with v0.3.4: --resume keeps the elapsed steps, the rebuilt schedule does not."""
    planned = planned_train_argv(dataset)
    reference, state = train(planned, snapshot_after=6)
    again, _ = train([*planned, "--resume", "s"], state=state)  # same argv: all 10 epochs once more
    assert len(again) == len(reference)
    assert again[12:] == pytest.approx([8e-07] * 18)  # steps 30..47 of a 30-step schedule: its floor, lr_end
    shorter = [*planned, "--resume", "s"]
    shorter[shorter.index("--max_train_epochs") + 1] = "4"  # only the epochs left, schedule sized for them
    tail, _ = train(shorter, state=state)
    assert tail[1:] == pytest.approx([tail[1]] * (len(tail) - 1))  # step 18 > 12: stuck at the floor at once
    assert tail != pytest.approx(reference[18:])


def test_a_fresh_tail_schedule_only_works_without_scheduler_state(dataset):
    """The tail of a polynomial is a polynomial: lr0' = lr_end + (lr0 - lr_end)(R/T)^p over R steps. It would
    need a fresh scheduler (weights and optimizer only); --resume restores last_epoch and defeats it."""
    planned = planned_train_argv(dataset)
    reference, state = train(planned, snapshot_after=6)
    total, remaining, power = len(reference), len(reference) - 18, 2.0
    lr0, lr_end = float(value(planned, "--learning_rate")), float(value(planned, "--lr_scheduler_args")[7:])
    tail_argv = list(planned)
    tail_argv[tail_argv.index("--learning_rate") + 1] = repr(lr_end + (lr0 - lr_end) * (remaining / total) ** power)
    tail_argv[tail_argv.index("--max_train_epochs") + 1] = str(remaining // PER_EPOCH)
    without_scheduler_state, _ = train(tail_argv, state=(state[0], None))
    assert without_scheduler_state == pytest.approx(reference[18:], rel=1e-9)
    with_scheduler_state, _ = train(tail_argv, state=state)
    assert with_scheduler_state != pytest.approx(reference[18:], rel=1e-3)


def test_total_steps_line_is_musubis():
    line = "[train] override steps. steps for 50 epochs is / 指定エポックまでのステップ数: 1234\n"
    match = resume.TOTAL_STEPS.search(line)
    assert match and (int(match[1]), int(match[2])) == (50, 1234)


# --- the resumed argv ---------------------------------------------------------------------------------

def test_resumed_argv_changes_only_what_it_must(dataset):
    planned = planned_train_argv(dataset)
    resumed = resume.resumed_argv(planned, SavedState(Path("/output/r/x-000004-state"), 4), 30)
    expected = list(planned)
    expected[expected.index("--max_train_epochs") + 1] = "6"
    expected[expected.index("--output_dir") + 1] = "/output/r/resume-e000004"
    at = expected.index("--lr_scheduler") + 2
    expected[at:at] = ["--lr_scheduler_type", "transformers.optimization.get_polynomial_decay_schedule_with_warmup"]
    at = expected.index("--lr_scheduler_args") + 1
    assert expected[at] == "lr_end=8e-07"
    expected[at + 1:at + 1] = ["power=2.0", "num_warmup_steps=0", "num_training_steps=30"]
    assert resumed == (*expected, "--resume", "/output/r/x-000004-state")


def test_resumed_argv_for_a_constant_schedule_keeps_it(dataset):
    planned = planned_train_argv(dataset, "train.lr_scheduler=constant")
    resumed = resume.resumed_argv(planned, SavedState(Path("/s"), 10), 30)
    assert "--lr_scheduler_type" not in resumed and value(resumed, "--max_train_epochs") == "0"


def test_resumed_argv_refuses_a_state_from_another_run(dataset):
    with pytest.raises(ValueError, match="outside 1..10"):
        resume.resumed_argv(planned_train_argv(dataset), SavedState(Path("/s"), 12), 30)


# --- saved states on disk -----------------------------------------------------------------------------

def write_state(folder: Path, cut: str | None = None) -> Path:
    folder.mkdir(parents=True)
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        with zipfile.ZipFile(folder / name, "w") as archive:
            archive.writestr("data.pkl", "x" * 100)
    if cut:
        data = (folder / cut).read_bytes()
        (folder / cut).write_bytes(data[:-20])
    return folder


@pytest.mark.parametrize("cut", ["model.safetensors", "optimizer.bin", "random_states_0.pkl"])
def test_a_state_cut_short_is_not_complete(tmp_path, cut):
    assert resume.state_complete(write_state(tmp_path / "whole"))
    assert not resume.state_complete(write_state(tmp_path / "cut", cut))


def test_a_state_without_its_last_file_is_not_complete(tmp_path):
    (write_state(tmp_path / "s") / "random_states_0.pkl").unlink()
    assert not resume.state_complete(tmp_path / "s")


def test_newest_complete_state_across_resume_folders(tmp_path):
    write_state(tmp_path / "x-000002-state")
    write_state(tmp_path / "x-000004-state")
    write_state(tmp_path / "resume-e000004" / "x-000002-state")  # epoch 6
    write_state(tmp_path / "resume-e000004" / "x-000004-state", cut="scheduler.bin")  # epoch 8, cut short
    write_state(tmp_path / "y-000008-state")  # another expert
    states = resume.saved_states(tmp_path, "x", 10)
    assert [(s.epoch, s.path.relative_to(tmp_path).as_posix()) for s in states] == [
        (2, "x-000002-state"), (4, "x-000004-state"), (6, "resume-e000004/x-000002-state")]
    write_state(tmp_path / "resume-e000004" / "x-state")  # the end-of-training state
    assert resume.saved_states(tmp_path, "x", 10)[-1].epoch == 10


def test_plan_start(tmp_path, dataset):
    planned = list(planned_train_argv(dataset))
    planned[planned.index("--output_dir") + 1] = str(tmp_path)
    name = value(planned, "--output_name")
    assert resume.plan_start(planned, None, attempted=False).note == "starting"
    assert resume.plan_start(planned, 30, True).note == "restarting from scratch: it saved no complete state"
    write_state(tmp_path / f"{name}-000004-state")
    assert "not recorded" in resume.plan_start(planned, None, True).note
    start = resume.plan_start(planned, 30, True)
    assert start.state.epoch == 4 and value(start.argv, "--resume") == str(tmp_path / f"{name}-000004-state")


def test_finalize_gives_files_the_uninterrupted_names(tmp_path):
    write_state(tmp_path / "x-000002-state")
    write_state(tmp_path / "x-000004-state")
    (tmp_path / "x-000002.safetensors").write_text("first attempt, epoch 2")
    (tmp_path / "x-000004.safetensors").write_text("first attempt, epoch 4")
    seg = tmp_path / "resume-e000002"
    write_state(seg / "x-000002-state")  # epoch 4 again
    write_state(seg / "x-000004-state", cut="optimizer.bin")
    (seg / "x-000002.safetensors").write_text("second attempt, epoch 4")
    (seg / "x.safetensors").write_text("final")
    (seg / "y.safetensors").write_text("the other expert's")
    resume.finalize(tmp_path, "x", 10)
    assert (tmp_path / "x-000004.safetensors").read_text() == "second attempt, epoch 4"
    assert (tmp_path / "x.safetensors").read_text() == "final"
    assert sorted(p.name for p in tmp_path.glob("x-*-state")) == ["x-000002-state", "x-000004-state"]
    assert [p.name for p in seg.iterdir()] == ["y.safetensors"]


# --- restarts end to end, against the musubi-tuner test double ----------------------------------------

@pytest.fixture
def box(tmp_path, dataset) -> Container:
    return Container(tmp_path, dataset)


def lrs(path: Path) -> list[float]:
    return [json.loads(line)["lr"] for line in path.read_text().splitlines()]


def test_restart_resumes_on_the_uninterrupted_schedule(box, tmp_path):
    box.stock_weights("wan21-t2v-1.3b")
    overrides = " ".join(SETTINGS)
    ref = box.run(box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="ref", LORA_GYM_SET=overrides,
                          FAKE_MUSUBI_LR_LOG=str(tmp_path / "ref.lr")))
    assert ref.returncode == 0, ref.stderr + ref.stdout
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET=overrides)
    first = box.run(env | {"FAKE_MUSUBI_STOP_AFTER_EPOCH": "5", "FAKE_MUSUBI_LR_LOG": str(tmp_path / "1.lr")})
    assert first.returncode == 137  # the trainer died as in a preemption, after saving epoch 4
    second = box.run(env | {"FAKE_MUSUBI_LR_LOG": str(tmp_path / "2.lr")})
    assert second.returncode == 0, second.stderr + second.stdout
    assert "cache-latents: skipped" in second.stdout and "train: resuming after epoch 4 from" in second.stdout
    # The recorded argv: the remaining 6 epochs, on the schedule sized for all 30 steps, into a resume folder.
    argv = [c for c in box.calls() if c["script"] == "wan_train_network"][-1]["argv"]
    run_dir = box.output / "r"
    assert value(argv, "--resume") == str(run_dir / "wan21-t2v-1.3b-000004-state")
    assert value(argv, "--max_train_epochs") == "6" and value(argv, "--output_dir") == str(run_dir / "resume-e000004")
    assert "num_training_steps=30" in argv
    # What musubi does with it (the double replays its schedule): the lr of every step as if never stopped.
    assert lrs(tmp_path / "1.lr")[:12] + lrs(tmp_path / "2.lr") == lrs(tmp_path / "ref.lr")
    names = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("wan21"))
    assert names == sorted(p.name for p in (box.output / "ref").iterdir() if p.name.startswith("wan21"))
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["status"] == "succeeded" and manifest["training"] == {"train": {"epochs": 10, "total_steps": 30}}
    assert [r["status_before"] for r in manifest["restarts"]] == ["failed"]
    # The samples find every checkpoint under musubi's names, also those a resumed attempt trained.
    assert manifest["samples"]["status"] == "succeeded"
    assert [s for s in manifest["steps"] if s["name"] == "train"][-1]["resumed_from"] == {
        "state": str(run_dir / "wan21-t2v-1.3b-000004-state"), "epoch": 4}


def test_a_state_cut_short_by_the_kill_is_passed_over(box):
    box.stock_weights("wan21-t2v-1.3b")
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET=" ".join(SETTINGS))
    assert box.run(env | {"FAKE_MUSUBI_STOP_AFTER_EPOCH": "4", "FAKE_MUSUBI_TORN_STATE": "1"}).returncode == 137
    second = box.run(env)
    assert second.returncode == 0 and "resuming after epoch 2" in second.stdout, second.stdout


def test_restart_without_saved_state_starts_the_training_again(box):
    box.stock_weights("wan21-t2v-1.3b")
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET="train.max_train_epochs=4")
    assert box.run(env | {"FAKE_MUSUBI_STOP_AFTER_EPOCH": "3"}).returncode == 137
    second = box.run(env)
    assert second.returncode == 0
    assert "train: restarting from scratch: train.save_state is off" in second.stdout
    first_argv, second_argv = [c["argv"] for c in box.calls() if c["script"] == "wan_train_network"]
    assert first_argv == second_argv


def test_restart_skips_the_expert_that_finished(box):
    box.stock_weights("wan22-t2v-vanilla", "both")
    env = box.env("wan22-t2v-vanilla", "both", LORA_GYM_RUN_ID="r", LORA_GYM_SET=" ".join(SETTINGS))
    assert box.run(env | {"FAKE_MUSUBI_STOP_AFTER_EPOCH": "wan22-t2v-vanilla-low:3"}).returncode == 137
    second = box.run(env)
    assert second.returncode == 0, second.stderr + second.stdout
    assert "train-high: skipped, it finished before the restart" in second.stdout
    assert "train-low: resuming after epoch 2" in second.stdout
    trainings = [value(c["argv"], "--output_name") for c in box.calls() if c["script"] == "wan_train_network"]
    assert trainings == ["wan22-t2v-vanilla-high", "wan22-t2v-vanilla-low", "wan22-t2v-vanilla-low"]


def test_restart_is_refused_for_a_finished_run_or_other_settings(box):
    box.stock_weights("wan21-t2v-1.3b")
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET="train.max_train_epochs=2")
    assert box.run(env).returncode == 0
    again = box.run(env)
    assert again.returncode == 2 and again.stderr.startswith("error: run r already succeeded")
    (box.output / "r" / "run.json").write_text(json.dumps({"status": "failed", "plan_sha256": "old"}))
    other = box.run(env | {"LORA_GYM_SET": "train.max_train_epochs=3"})
    assert other.returncode == 2 and "was started with other settings" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1


def test_a_resumed_run_stopped_again_resumes_again(box, tmp_path):
    box.stock_weights("wan21-t2v-1.3b")
    overrides = " ".join(SETTINGS)
    box.run(box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="ref", LORA_GYM_SET=overrides,
                    FAKE_MUSUBI_LR_LOG=str(tmp_path / "ref.lr")))
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET=overrides)
    for attempt, stop in ((1, "5"), (2, "3")):  # the second attempt stops after its 3rd epoch: epoch 7
        lr_log = str(tmp_path / f"{attempt}.lr")
        assert box.run(env | {"FAKE_MUSUBI_STOP_AFTER_EPOCH": stop, "FAKE_MUSUBI_LR_LOG": lr_log}).returncode == 137
    third = box.run(env | {"FAKE_MUSUBI_LR_LOG": str(tmp_path / "3.lr")})
    assert third.returncode == 0, third.stderr + third.stdout
    assert f"resuming after epoch 6 from {box.output / 'r' / 'resume-e000004' / 'wan21-t2v-1.3b-000002-state'}" \
        in third.stdout
    assert lrs(tmp_path / "1.lr")[:12] + lrs(tmp_path / "2.lr")[:6] + lrs(tmp_path / "3.lr") == lrs(tmp_path / "ref.lr")
    assert sorted(p.name for p in (box.output / "r").iterdir() if p.name.startswith("wan21")) == sorted(
        p.name for p in (box.output / "ref").iterdir() if p.name.startswith("wan21"))
    assert not list((box.output / "r").glob("resume-e*"))


def test_a_stopped_run_continues(box):
    box.stock_weights("wan21-t2v-1.3b")
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET="train.max_train_epochs=2")
    proc = subprocess.Popen([sys.executable, "-m", "lora_gym_entrypoint"], env=env | {
        "FAKE_MUSUBI_HANG": "wan_train_network"}, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while not proc.stdout.readline().strip().endswith("ready"):
        pass
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert json.loads((box.output / "r" / "run.json").read_text())["status"] == "stopped"
    second = box.run(env)
    assert second.returncode == 0 and "train: restarting from scratch: train.save_state is off" in second.stdout
    assert "(its last attempt: stopped)" in second.stdout


def test_killed_between_the_last_state_and_the_final_lora(box):
    """musubi saves `<name>-state` before the final LoRA: a resume from it trains 0 epochs and saves the LoRA."""
    box.stock_weights("wan21-t2v-1.3b")
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET=" ".join(SETTINGS))
    assert box.run(env).returncode == 0
    run_dir = box.output / "r"
    (run_dir / "wan21-t2v-1.3b.safetensors").unlink()
    manifest = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps(manifest | {"status": "running"}))
    second = box.run(env)
    assert second.returncode == 0 and "train: resuming after epoch 10" in second.stdout, second.stdout
    last_train = [c for c in box.calls() if c["script"] == "wan_train_network"][-1]["argv"]
    assert value(last_train, "--max_train_epochs") == "0"
    assert resume.file_whole(run_dir / "wan21-t2v-1.3b.safetensors") and (run_dir / "wan21-t2v-1.3b-state").is_dir()
