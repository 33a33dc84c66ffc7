"""An out-of-memory that explains itself: the container run with the musubi test double printing torch's
real CUDA OOM error (FAKE_MUSUBI_OOM) records in run.json, and says last, which setting to change."""

from __future__ import annotations

import json

import pytest
from test_entrypoint import Container

from launcher.core.job import prepare
from lora_gym_entrypoint import oom


@pytest.fixture
def box(tmp_path, dataset) -> Container:
    return Container(tmp_path, dataset)


def test_training_oom_names_the_setting_to_change(box):
    box.stock_weights("wan21-t2v-14b")
    env = box.env("wan21-t2v-14b", LORA_GYM_SET="resources.gpu_memory_gb=24", FAKE_MUSUBI_OOM="wan_train_network")
    result = box.run(env)
    assert result.returncode == 1
    [run_dir] = box.runs()
    manifest = json.loads((run_dir / "run.json").read_text())
    expected = prepare("wan21-t2v-14b", None, ["resources.gpu_memory_gb=24"], box.dataset).plan.memory[0].oom_hint
    assert manifest["status"] == "failed"
    assert manifest["failure"] == {"step": "train", "kind": "cuda_out_of_memory", "hint": expected}
    assert "--gpu-memory 32" in expected and "--set train.blocks_to_swap=" in expected
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("[lora-gym] run failed;") and last.endswith(expected)


def test_other_failures_carry_no_oom_hint(box):
    box.stock_weights("wan21-t2v-14b")
    result = box.run(box.env("wan21-t2v-14b", FAKE_MUSUBI_FAIL="wan_train_network"))
    assert result.returncode == 3
    manifest = json.loads((box.runs()[0] / "run.json").read_text())
    assert "failure" not in manifest and "out of memory" not in result.stdout


@pytest.mark.parametrize("line, seen", [
    ("[train] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB.", True),
    ("[train] torch.cuda.OutOfMemoryError: CUDA out of memory.", True),
    ("[train] RuntimeError: CUDA error: out of memory", True),
    ("[train] RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`", True),
    ("[train] steps: 10/400 loss 0.12", False),
    ("[train] MemoryError", False),  # host RAM: not the GPU's advice
])
def test_oom_is_recognised_from_torch_messages(line, seen):
    class Sink:
        def write(self, text):
            return len(text)

    watch = oom.Watch(Sink())
    watch.write(line + "\n")
    assert watch.seen is seen


def test_a_restart_that_succeeds_drops_the_earlier_oom(box):
    box.stock_weights("wan21-t2v-14b")
    env = box.env("wan21-t2v-14b", LORA_GYM_RUN_ID="r", LORA_GYM_SET="resources.gpu_memory_gb=24")
    assert box.run(env | {"FAKE_MUSUBI_OOM": "wan_train_network"}).returncode == 1
    assert "failure" in json.loads((box.output / "r" / "run.json").read_text())
    again = box.run(env)
    assert again.returncode == 0, again.stdout + again.stderr
    manifest = json.loads((box.output / "r" / "run.json").read_text())
    assert manifest["status"] == "succeeded" and "failure" not in manifest
