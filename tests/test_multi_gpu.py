"""Several GPUs for one run (`--gpus-per-run N`, `resources.gpus`): accelerate's data-parallel launch in the plan,
musubi-tuner's step arithmetic (trainer_base.py at the pinned commit: ceil(batches / num_processes / accumulation)
optimizer steps per epoch, a schedule of max_train_steps x num_processes), the dataset check, the cost, and runs
and resumes through the real entrypoint with the accelerate and musubi-tuner test doubles."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET
from test_entrypoint import Container
from test_resume import PER_EPOCH, SETTINGS, lrs, value, write_state

from launcher import cost
from launcher.backends import LaunchOptions, modal_backend, runpod
from launcher.backends.local import container_spec
from launcher.cli.main import main
from launcher.core.checks import plan_problems
from launcher.core.errors import UserError
from launcher.core.job import prepare
from launcher.core.plan import Step
from launcher.sweep.local_sweep import slots
from lora_gym_entrypoint import resume
from lora_gym_entrypoint.resume import SavedState

TWO = ("resources.gpus=2",)
NO_SAMPLES = ("samples.enabled=false",)  # these runs are about training: its step is the last


def train_argv(job) -> tuple[str, ...]:
    return next(s.argv for s in job.plan.steps if s.name.startswith("train"))


def launch_part(argv) -> list[str]:
    return list(argv[:next(i for i, a in enumerate(argv) if a.endswith(".py"))])


# --- the plan -----------------------------------------------------------------------------------------------

def test_two_gpus_launch_two_processes_with_multi_gpu_and_one_gpu_does_not():
    one, two = (prepare("wan21-t2v-14b", None, o, EXAMPLE_DATASET, run_id="r") for o in ((), TWO))
    assert value(launch_part(train_argv(two)), "--num_processes") == "2" and "--multi_gpu" in train_argv(two)
    assert value(launch_part(train_argv(one)), "--num_processes") == "1" and "--multi_gpu" not in train_argv(one)
    assert (one.plan.resources.gpu_count, two.plan.resources.gpu_count) == (1, 2)
    # every process holds its own host copy of what block swap and offload keep there
    assert two.plan.resources.host_memory_gb >= one.plan.resources.host_memory_gb
    # the script's own argv (musubi's options) is the same: data parallelism is accelerate's alone
    def script(job):
        return train_argv(job)[len(launch_part(train_argv(job))):]
    assert script(two) == script(one)


def test_the_plan_check_catches_a_launch_that_disagrees_with_resources_gpus():
    job = prepare("wan21-t2v-14b", None, TWO, EXAMPLE_DATASET)
    argv = [a for a in train_argv(job) if a != "--multi_gpu"]
    steps = tuple(Step(s.name, tuple(argv)) if s.name == "train" else s for s in job.plan.steps)
    broken = type(job.plan)(**{**job.plan.__dict__, "steps": steps})
    assert any("--num_processes 2 and --multi_gpu" in p for p in plan_problems(broken, job.loaded.preset))
    assert plan_problems(job.plan, job.loaded.preset) == []


@pytest.mark.parametrize("bad", ["0", "9", "1.5", "two"])
def test_gpus_per_run_out_of_bounds_is_one_error_line(bad, capsys):
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(EXAMPLE_DATASET), "--gpus-per-run", bad,
                 "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--gpus-per-run" in err[0]
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(EXAMPLE_DATASET), "--set",
                 f"resources.gpus={bad}", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resources.gpus" in err[0]


def test_gpus_per_run_reaches_the_plan_and_the_dry_run(capsys):
    assert main(["run", "--preset", "wan21-t2v-14b", "--dataset", str(EXAMPLE_DATASET), "--gpus-per-run", "2",
                 "--dry-run", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    train = next(s for s in data["steps"] if s["name"] == "train")
    assert train["argv"][:5] == ["accelerate", "launch", "--num_processes", "2", "--multi_gpu"]
    assert data["resources"]["gpu_count"] == 2


# --- the dataset check --------------------------------------------------------------------------------------

def test_dataset_check_reports_per_gpu_steps_and_time():
    from launcher.core.presets import load_preset
    from launcher.media.check import check_dataset, render

    one = check_dataset(EXAMPLE_DATASET, load_preset("wan21-t2v-14b").preset)
    two = check_dataset(EXAMPLE_DATASET, load_preset("wan21-t2v-14b", TWO).preset)
    batches = sum(e.batches for e in one.entries)
    assert one.steps_per_epoch == batches and two.steps_per_epoch == math.ceil(batches / 2)
    assert two.seconds == pytest.approx(one.seconds / 2)
    assert "2 GPUs at batch size 1 each, 2 per step" in render(two)
    many = check_dataset(EXAMPLE_DATASET, load_preset("wan21-t2v-14b", ("resources.gpus=8",)).preset)
    assert many.steps_per_epoch == 1
    assert any("batches per epoch for 8 GPUs" in p.message for p in many.warnings) == (batches < 8)


# --- cost and the backends ----------------------------------------------------------------------------------

def test_cost_counts_every_gpu():
    options = LaunchOptions(dataset=str(EXAMPLE_DATASET), image="ghcr.io/you/lora-gym-wan22:0.1.0")
    for expert, gpus in (("high", 2), ("both", 4)):
        job = prepare("wan22-t2v-lightning", expert, TWO, EXAMPLE_DATASET)
        quote = modal_backend.quote(job, options)
        assert quote.gpus == gpus
        # 3600 s of training in all; `both` trains its two experts at once, so half of it passes on the clock
        hours = (1 if expert == "high" else 0.5) + cost.STARTUP_HOURS
        assert cost.estimate(3600, quote).usd == pytest.approx(hours * quote.usd_per_hour * gpus)
    spec = modal_backend.modal_spec(prepare("wan22-t2v-lightning", "high", TWO, EXAMPLE_DATASET), options)
    assert spec.gpu == "H100:2"  # Modal's form for several GPUs in one container
    job = prepare("wan21-t2v-1.3b", None, TWO, EXAMPLE_DATASET)
    data = runpod.RunPodBackend().dry_run_data(job, LaunchOptions(dataset=str(EXAMPLE_DATASET),
                                                                  image="ghcr.io/you/lora-gym-wan21:0.1.0"))
    assert data["pods"][0]["body"]["gpu"]["count"] == 2 and data["gpu"]["count"] == 2


def test_local_needs_as_many_gpus_as_the_run_trains_on(tmp_path):
    job = prepare("wan21-t2v-1.3b", None, TWO, EXAMPLE_DATASET)
    for gpus in ("0", "none"):
        with pytest.raises(UserError, match="trains on 2 GPUs"):
            container_spec(job, LaunchOptions(dataset=str(EXAMPLE_DATASET), output=str(tmp_path), gpus=gpus))
    assert container_spec(job, LaunchOptions(dataset=str(EXAMPLE_DATASET), output=str(tmp_path),
                                             gpus="0,1")).gpus == ("0", "1")


def test_a_local_sweep_gives_each_run_its_own_group_of_gpus():
    assert slots("0,1,2,3", 2) == ["0,1", "2,3"]
    assert slots("0,1,2", 2) == ["0,1,2"]  # one group only: a single worker with all of them
    assert slots("0,1", 1) == ["0", "1"] and slots("all", 2) == ["all"]


# --- resume arithmetic --------------------------------------------------------------------------------------

def test_resumed_schedule_is_sized_for_every_process():
    job = prepare("wan21-t2v-1.3b", None, (*SETTINGS, *TWO), EXAMPLE_DATASET)
    resumed = resume.resumed_argv(train_argv(job), SavedState(Path("/output/r/x-000004-state"), 4), 20)
    assert "num_training_steps=40" in resumed  # musubi: max_train_steps x num_processes


def test_a_two_process_state_needs_both_random_states(tmp_path):
    state = write_state(tmp_path / "s")
    assert resume.state_complete(state) and not resume.state_complete(state, processes=2)
    (state / "random_states_1.pkl").write_bytes((state / "random_states_0.pkl").read_bytes())
    assert resume.state_complete(state, processes=2)


# --- end to end with the test doubles -----------------------------------------------------------------------

@pytest.fixture
def box(tmp_path, dataset) -> Container:
    box = Container(tmp_path, dataset)
    box.stock_weights("wan21-t2v-1.3b")
    return box


def test_a_two_gpu_run_launches_two_processes_and_counts_steps_per_gpu(box):
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r2", LORA_GYM_SET=" ".join((*SETTINGS, *TWO, *NO_SAMPLES)))
    result = box.run(env)
    assert result.returncode == 0, result.stderr + result.stdout
    argv = box.calls()[-1]["argv"]
    assert "--multi_gpu" not in argv  # accelerate's own options stay with accelerate (the double checks them)
    manifest = json.loads((box.output / "r2" / "run.json").read_text())
    assert manifest["steps"][-1]["argv"][2:5] == ["--num_processes", "2", "--multi_gpu"]
    # 3 batches per epoch on 2 processes: ceil(3 / 2) = 2 optimizer steps per epoch, 10 epochs
    assert manifest["training"] == {"train": {"epochs": 10, "total_steps": 10 * math.ceil(PER_EPOCH / 2)}}
    assert (box.output / "r2" / "wan21-t2v-1.3b-state" / "random_states_1.pkl").is_file()


def test_a_two_gpu_run_resumes_on_its_uninterrupted_schedule(box, tmp_path):
    overrides = " ".join((*SETTINGS, *TWO, *NO_SAMPLES))
    ref = box.run(box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="ref", LORA_GYM_SET=overrides,
                          FAKE_MUSUBI_LR_LOG=str(tmp_path / "ref.lr")))
    assert ref.returncode == 0, ref.stderr + ref.stdout
    env = box.env("wan21-t2v-1.3b", LORA_GYM_RUN_ID="r", LORA_GYM_SET=overrides)
    assert box.run(env | {"FAKE_MUSUBI_STOP_AFTER_EPOCH": "5", "FAKE_MUSUBI_LR_LOG": str(tmp_path / "1.lr")}
                   ).returncode == 137
    second = box.run(env | {"FAKE_MUSUBI_LR_LOG": str(tmp_path / "2.lr")})
    assert second.returncode == 0 and "resuming after epoch 4" in second.stdout, second.stdout
    assert "num_training_steps=40" in box.calls()[-1]["argv"]  # 20 steps x 2 processes
    per_epoch = math.ceil(PER_EPOCH / 2)
    assert lrs(tmp_path / "1.lr")[:4 * per_epoch] + lrs(tmp_path / "2.lr") == lrs(tmp_path / "ref.lr")
