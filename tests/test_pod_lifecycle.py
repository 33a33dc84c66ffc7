"""The real entrypoint on a (fake) RunPod pod: it terminates its own pod however the job ends, and stops
the run itself at LORA_GYM_MAX_HOURS, so nothing is left billing when the user's laptop is gone."""

from __future__ import annotations

import json
import time

import pytest
from fakes.fake_runpod import FakeRunPod
from test_entrypoint import Container

API_KEY = "rpa_AccountKey_lifecycle"


@pytest.fixture
def pod(tmp_path, dataset):
    with FakeRunPod(api_key=API_KEY) as fake:
        fake.add_pod("pod9", cost=2.69)
        yield fake, Container(tmp_path, dataset)


def pod_env(fake, box, preset="wan21-t2v-14b", **extra):
    return box.env(preset, RUNPOD_POD_ID="pod9", RUNPOD_API_KEY=fake.pod_key("pod9"),
                   RUNPOD_API_BASE_URL=fake.url, LORA_GYM_TERMINATE_POD="1", **extra)


@pytest.mark.parametrize("extra, code", [({}, 0), ({"FAKE_MUSUBI_FAIL": "wan_train_network"}, 3)])
def test_pod_terminates_itself_on_success_and_failure(pod, extra, code):
    fake, box = pod
    box.stock_weights("wan21-t2v-14b")
    result = box.run(pod_env(fake, box, **extra))
    assert result.returncode == code, result.stderr
    assert fake.endings == [("pod9", "terminate", "pod key")] and fake.pods["pod9"]["status"] == "TERMINATED"
    assert fake.pod_key("pod9") not in result.stdout + result.stderr


def test_a_pod_whose_key_may_not_terminate_stops_itself(pod):
    fake, box = pod  # RunPod's docs never say whether a pod-scoped key may terminate; they show it stopping
    fake.pod_keys_may = {"stop"}
    box.stock_weights("wan21-t2v-14b")
    result = box.run(pod_env(fake, box))
    assert result.returncode == 0, result.stderr
    assert fake.endings == [("pod9", "stop", "pod key")] and fake.pods["pod9"]["status"] == "EXITED"


def test_pod_terminates_itself_after_bad_input(pod):
    fake, box = pod  # no weights: preflight fails with exit 2, and the pod must still go away
    result = box.run(pod_env(fake, box))
    assert result.returncode == 2 and result.stderr.startswith("error: weight file")
    assert fake.pods["pod9"]["status"] == "TERMINATED"


def test_max_hours_stops_the_run_from_inside(pod):
    fake, box = pod
    box.stock_weights("wan21-t2v-14b")
    env = pod_env(fake, box, LORA_GYM_MAX_HOURS=str(2 / 3600), FAKE_MUSUBI_HANG="wan_cache_latents")
    started = time.monotonic()
    result = box.run(env)
    assert result.returncode == 143 and time.monotonic() - started < 30
    [run_json] = list(box.output.glob("*/run.json"))
    assert json.loads(run_json.read_text())["status"] == "stopped"
    assert fake.pods["pod9"]["status"] == "TERMINATED"


def test_bad_max_hours_is_one_line(pod):
    fake, box = pod
    result = box.run(box.env("wan21-t2v-14b", LORA_GYM_MAX_HOURS="soon"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: LORA_GYM_MAX_HOURS='soon' is not a number of hours above 0 and at most 720: e.g. 12 or 0.5"]
