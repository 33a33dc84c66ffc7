"""The RunPod backend against a loopback fake of RunPod's REST API v2 and moto's S3 server (a real S3-protocol
endpoint standing in for the network volume's S3-compatible API). No network, no credentials."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
import uuid

import pytest
from conftest import ROOT, clean_env
from fakes.fake_runpod import FakeRunPod

from launcher import runs
from launcher.backends import runpod, runpod_api, runpod_gpus, runpod_pods, runpod_s3
from launcher.cli.main import main
from launcher.core.errors import UserError
from lora_gym_entrypoint import pod as pod_side

boto3 = pytest.importorskip("boto3")

API_KEY = "rpa_test-account-key"
S3_SECRET = "rps_S3-Secret-Value"
HF_SECRET_VALUE = "hf_NeverLeaveThisMachine"
REGISTRY = "ghcr.io/lora-gym-test"


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Images pushed to a registry RunPod can pull from (a bare local tag is refused, tested below)."""
    monkeypatch.setenv("LORA_GYM_REGISTRY", REGISTRY)
    monkeypatch.delenv("RUNPOD_REGISTRY_AUTH_ID", raising=False)


@pytest.fixture
def fake(monkeypatch):
    with FakeRunPod(api_key=API_KEY, uptime_scale=3600) as server:  # one second of test = one hour of uptime
        monkeypatch.setenv("RUNPOD_API_KEY", API_KEY)
        monkeypatch.setenv("RUNPOD_API_BASE_URL", server.url)
        yield server


@pytest.fixture
def volume(fake, s3_url, monkeypatch, tmp_path):
    """A network volume known to the fake API, whose bucket exists on the S3 server; env for both."""
    monkeypatch.setenv("LORA_GYM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RUNPOD_S3_ENDPOINT_URL", s3_url)
    monkeypatch.setenv("RUNPOD_S3_ACCESS_KEY_ID", "user_test")
    monkeypatch.setenv("RUNPOD_S3_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("HF_TOKEN", HF_SECRET_VALUE)
    monkeypatch.setattr(runpod_api, "BACKOFF_S", 0.0)
    monkeypatch.setattr(runpod.RunPodBackend, "FOLLOW_IDLE_S", 0.3)
    monkeypatch.setattr(runpod.RunPodBackend, "TAIL_IDLE_S", 0.3)
    monkeypatch.setattr(runpod.RunPodBackend, "RECONNECT_S", 0.05)
    volume_id = f"vol-{uuid.uuid4().hex[:8]}"
    fake.add_volume(volume_id)
    boto3.client("s3", endpoint_url=s3_url, region_name="us-east-1", aws_access_key_id="x",
                 aws_secret_access_key="x").create_bucket(Bucket=volume_id)
    return volume_id


def s3():
    return runpod_s3.client("US-KS-2")


def json_blocks(out: str) -> list[dict]:
    """The pretty-printed JSON bodies of a `--dry-run`, between a line `{` and a line `}`."""
    found, block = [], None
    for line in out.splitlines():
        block = [line] if line == "{" else block + [line] if block is not None else None
        if block and line == "}":
            found.append(json.loads("\n".join(block)))
            block = None
    return found


def one_error(err: str) -> str:
    """The one `error:` line, the last thing printed (a launch prints its estimate first)."""
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], err
    return lines[-1]


def launch(dataset, volume, *extra, preset="wan21-t2v-1.3b"):
    return main(["run", "--preset", preset, "--dataset", str(dataset), "--backend", "runpod", "--volume", volume,
                 "--no-check", *extra])


def pod_exits(fake, pod_id, code):
    """A pod's process ending with `code` and terminating its pod in a `finally`, as entrypoints/main.py does
    (tests/test_pod_lifecycle.py runs the real entrypoint that way); here only the backend's view is tested."""
    script = ("import os, sys\nfrom lora_gym_entrypoint import pod\ntry:\n    sys.exit(int(sys.argv[1]))\n"
              "finally:\n    if os.environ.get('LORA_GYM_TERMINATE_POD') == '1':\n"
              "        pod.terminate_own_pod(os.environ)\n")
    env = clean_env(RUNPOD_POD_ID=pod_id, RUNPOD_API_KEY=fake.pod_key(pod_id), RUNPOD_API_BASE_URL=fake.url,
                    LORA_GYM_TERMINATE_POD="1")
    return subprocess.run([sys.executable, "-c", script, str(code)], env=env, capture_output=True, text=True)


def write_run_output(volume, run_id, exit_code):
    client = s3()
    client.put_object(Bucket=volume, Key=f"lora-gym/output/{run_id}/run.json",
                      Body=json.dumps({"run_id": run_id, "exit_code": exit_code}).encode())
    client.put_object(Bucket=volume, Key=f"lora-gym/output/{run_id}/lora.safetensors", Body=b"w" * 4096)


# --- dry run --------------------------------------------------------------------------------------------

def test_dry_run_with_gpu_memory_picks_the_class_and_says_the_host_ram(dataset, capsys):
    assert main(["run", "--preset", "wan21-t2v-14b", "--dataset", str(dataset), "--gpu-memory", "24",
                 "--backend", "runpod", "--dry-run"]) == 0
    out = capsys.readouterr().out
    body = json_blocks(out)[0]
    assert body["gpu"]["id"] == "NVIDIA GeForce RTX 4090"
    assert body["env"]["LORA_GYM_SET"] == "resources.gpu_memory_gb=24"  # the container plans the same swap
    assert "# host RAM: the plan needs about 40 GB" in out


def test_dry_run_prints_the_exact_bodies_without_credentials(dataset, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF_SECRET_VALUE)
    assert main(["run", "--preset", "wan22-t2v-lightning", "--expert", "both", "--dataset", str(dataset),
                 "--backend", "runpod", "--dry-run", "--image", "ghcr.io/you/lora-gym-wan22:0.1.0-slim", "--max-hours",
                 "5"]) == 0
    out = capsys.readouterr().out
    bodies = json_blocks(out)
    assert [b["env"]["LORA_GYM_EXPERT"] for b in bodies] == ["high", "low"]
    body = bodies[0]
    assert body["gpu"] == {"id": "NVIDIA H100 80GB HBM3", "count": 1} and body["cloud"] == "SECURE"
    assert body["mounts"] == {"network": [{"volumeId": "<id of network volume lora-gym-wan22>", "path": "/workspace"}]}
    assert body["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_token }}" and HF_SECRET_VALUE not in out
    assert body["env"]["LORA_GYM_MAX_HOURS"] == "5" and body["env"]["LORA_GYM_TERMINATE_POD"] == "1"
    assert body["disk"] < 100  # slim: no weights on the container disk
    assert "2 x NVIDIA H100 80GB HBM3" in out and "deploybase.ai" in out


def test_full_image_disk_holds_the_weights_and_max_cost_caps_the_hours(dataset, capsys):
    assert main(["run", "--preset", "wan21-t2v-14b", "--dataset", str(dataset), "--backend", "runpod", "--dry-run",
                 "--max-cost", "10"]) == 0
    (body,) = json_blocks(capsys.readouterr().out)
    assert body["disk"] >= 130 + 20 and "HF_TOKEN" not in body["env"]
    price = runpod_gpus.FALLBACK_PRICES[body["gpu"]["id"]]
    assert float(body["env"]["LORA_GYM_MAX_HOURS"]) == pytest.approx(10 / price, rel=1e-3)


# --- the image RunPod pulls ------------------------------------------------------------------------------

@pytest.mark.parametrize("image", [None, "lora-gym-wan21:0.1.0", "localhost:5000/lora-gym-wan21:0.1.0"])
def test_an_image_runpod_cannot_pull_is_one_line_before_anything_is_made(dataset, volume, fake, capsys,
                                                                          monkeypatch, image):
    monkeypatch.delenv("LORA_GYM_REGISTRY")  # the default image is then a bare local tag too
    for argv in (["--dry-run"], ["--dry-run", "--format", "json"], []):
        assert launch(dataset, volume, *argv, *(["--image", image] if image else [])) == 2
        printed = capsys.readouterr()
        line = one_error(printed.err)
        assert line.startswith("error: RunPod pulls the image from a registry") and "LORA_GYM_REGISTRY" in line
        assert printed.out == ""
    assert not fake.created and not runpod_s3.list_objects(s3(), volume, "lora-gym")  # nothing sent or uploaded
    assert not fake.requests and not runs.all_runs()


def test_a_private_image_names_the_runpod_registry_credential(dataset, volume, fake, capsys, monkeypatch):
    monkeypatch.setenv("RUNPOD_REGISTRY_AUTH_ID", "6n2k8v4d")  # made once: `runpodctl registry create ...`
    assert launch(dataset, volume, "--dry-run") == 0
    (body,) = json_blocks(capsys.readouterr().out)
    assert body["registry"] == "6n2k8v4d"
    assert launch(dataset, volume) == 0
    assert fake.created[0]["registry"] == "6n2k8v4d"  # the fake held the body to RunPod's OpenAPI document
    monkeypatch.delenv("RUNPOD_REGISTRY_AUTH_ID")
    assert launch(dataset, volume, "--dry-run") == 0
    out = capsys.readouterr().out
    assert "registry" not in json_blocks(out)[0] and "set RUNPOD_REGISTRY_AUTH_ID" in out


@pytest.mark.parametrize("value", ["ghp_" + "a1" * 18, "github_pat_11ABC", "user:password", "x" * 65])
def test_a_token_in_place_of_the_credential_id_is_refused_and_never_shown(dataset, volume, fake, capsys,
                                                                         monkeypatch, value):
    monkeypatch.setenv("RUNPOD_REGISTRY_AUTH_ID", value)
    for argv in (["--dry-run"], []):
        assert launch(dataset, volume, *argv) == 2
        printed = capsys.readouterr()
        line = one_error(printed.err)
        assert "RUNPOD_REGISTRY_AUTH_ID" in line and "runpodctl registry list" in line
        assert value not in printed.out + printed.err
    assert not fake.requests and not runpod_s3.list_objects(s3(), volume, "lora-gym")  # checked before all else


def test_override_with_quotes_and_newlines_reaches_the_pod_env_intact(dataset, volume, fake):
    value = 'it\'s a "test"\n"}, {"injected": 1} $(rm -rf /)'
    assert launch(dataset, volume, "--set", f"description={value}") == 0
    env = fake.created[0]["env"]  # decoded from the JSON the backend sent
    assert shlex.split(env["LORA_GYM_SET"]) == [f"description={value}"]
    assert "injected" not in fake.created[0]


# --- launch, poll, logs, self-termination, pull ----------------------------------------------------------

def test_run_end_to_end_on_success(dataset, volume, fake, capsys, tmp_path):
    assert launch(dataset, volume, "--max-hours", "2") == 0
    body, (pod_id,) = fake.created[0], list(fake.pods)
    assert body["gpu"]["id"] == "NVIDIA GeForce RTX 4090" and body["dataCenterIds"] == ["US-KS-2"]
    assert body["env"]["LORA_GYM_MAX_HOURS"] == "2" and body["mounts"]["network"][0]["volumeId"] == volume
    dataset_dir = body["env"]["LORA_GYM_DATASET_DIR"].removeprefix("/workspace/")
    keys = {o["Key"] for o in runpod_s3.list_objects(s3(), volume, dataset_dir)}
    assert len(keys) == len([p for p in dataset.rglob("*") if p.is_file()])
    (record,) = runs.all_runs()
    run_id = record["run_id"]
    capsys.readouterr()

    assert main(["status", run_id]) == 0
    assert "RUNNING" in capsys.readouterr().out  # the first poll moves PROVISIONING to RUNNING
    fake.log(pod_id, "[cache_latents] ok", "[train] epoch 1/50", "[lora-gym] run succeeded")
    write_run_output(volume, run_id, 0)
    ended = pod_exits(fake, pod_id, 0)
    assert ended.returncode == 0 and fake.pods[pod_id]["status"] == "TERMINATED"
    assert fake.auth_headers[-1] == f"Bearer {fake.pod_key(pod_id)}" and fake.pod_key(pod_id) not in ended.stderr

    assert main(["logs", run_id, "--follow"]) == 0
    assert capsys.readouterr().out.splitlines() == ["[cache_latents] ok", "[train] epoch 1/50",
                                                     "[lora-gym] run succeeded"]
    assert main(["status", run_id]) == 0
    out = capsys.readouterr().out
    assert "TERMINATED" in out and "cost so far" in out
    assert main(["pull", run_id, str(tmp_path / "dl")]) == 0
    assert (tmp_path / "dl" / run_id / "lora.safetensors").read_bytes() == b"w" * 4096


def test_failed_run_terminates_its_pod_and_logs_return_its_exit_code(dataset, volume, fake, capsys):
    assert launch(dataset, volume) == 0
    (pod_id,), (record,) = list(fake.pods), runs.all_runs()
    fake.log(pod_id, "[train] CUDA out of memory", "[lora-gym] run failed")
    write_run_output(volume, record["run_id"], 3)
    assert pod_exits(fake, pod_id, 3).returncode == 3 and fake.pods[pod_id]["status"] == "TERMINATED"
    assert main(["logs", record["run_id"], "--follow"]) == 3
    assert "CUDA out of memory" in capsys.readouterr().out


def test_follow_streams_until_the_pod_ends(dataset, volume, fake, capsys):
    fake.log("pod1", "[lora-gym] starting")  # pod1 will be the first pod created
    threading.Timer(1.0, lambda: (fake.log("pod1", "[train] done"), pod_exits(fake, "pod1", 0))).start()
    assert launch(dataset, volume, "--follow") == 1  # no run.json on the volume: the run did not finish
    assert capsys.readouterr().out.splitlines() == ["[lora-gym] starting", "[train] done"]


def test_status_shows_rate_and_cost_so_far(dataset, volume, fake):
    assert launch(dataset, volume) == 0
    (record,) = runs.all_runs()
    rows = runpod.RunPodBackend().status(record)
    (row,) = [v for k, v in rows.items() if k.startswith("pod ")]
    assert "RUNNING" in row and "$0.69/h" in row
    assert float(rows["cost so far"].split()[0].lstrip("$")) > 0  # uptime (scaled to hours) x $/h


def test_status_shows_each_pods_progress_from_the_volume(dataset, volume, fake):
    assert launch(dataset, volume, "--expert", "both", preset="wan22-t2v-lightning") == 0
    (record,) = runs.all_runs()
    high = next(p for p in record["pods"] if p["expert"] == "high")
    progress = {"stage": "train-high", "status": "running", "updated_at": "2026-11-29T01:00:00+00:00",
                "current": {"epoch": 3, "epochs": 10, "step": 9, "steps": 30, "it_per_s": 2.5, "loss_avg": 0.1}}
    s3().put_object(Bucket=volume, Key=f"lora-gym/output/{high['run_id']}/progress.json",
                    Body=json.dumps(progress).encode())
    rows = runpod.RunPodBackend().status(record)
    assert rows["progress high"].startswith("train-high: epoch 3/10, step 9/30 (30%), 2.50 it/s, loss 0.1")
    assert rows["progress low"] == "none yet"


def test_expert_both_starts_two_pods_on_one_volume_and_stop_ends_both(dataset, volume, fake, capsys):
    assert launch(dataset, volume, "--expert", "both", preset="wan22-t2v-lightning") == 0
    assert [b["env"]["LORA_GYM_EXPERT"] for b in fake.created] == ["high", "low"]
    assert {b["mounts"]["network"][0]["volumeId"] for b in fake.created} == {volume}
    assert fake.created[0]["env"]["LORA_GYM_RUN_ID"] != fake.created[1]["env"]["LORA_GYM_RUN_ID"]
    # each pod names the other's run folder: the one that finishes training last samples the pair
    # (tests/test_sample_lora.py runs two such entrypoints on one volume)
    high, low = (b["env"] for b in fake.created)
    assert high["LORA_GYM_PAIR_DIR"] == f"{high['LORA_GYM_OUTPUT_DIR']}/{low['LORA_GYM_RUN_ID']}"
    assert low["LORA_GYM_PAIR_DIR"] == f"{low['LORA_GYM_OUTPUT_DIR']}/{high['LORA_GYM_RUN_ID']}"
    (record,) = runs.all_runs()
    # `launcher run --from` starts the pair again: its expert, and its image by tag (a tag pins nothing)
    assert record["reproduce"]["expert"] == "both" and record["reproduce"]["image"]["source"] == "unresolved"
    assert record["reproduce"]["image"]["ref"] == fake.created[0]["image"] == high["LORA_GYM_IMAGE"]
    capsys.readouterr()
    assert main(["status", record["run_id"]]) == 0
    out = capsys.readouterr().out
    assert "pod high" in out and "pod low" in out
    assert main(["stop", record["run_id"]]) == 0
    assert {p["status"] for p in fake.pods.values()} == {"TERMINATED"}


def test_a_failed_second_pod_terminates_the_first(dataset, volume, fake, capsys, monkeypatch):
    real_draw, creates = fake.faults.draw, []

    def draw(op, random_ops):  # the first create goes through, every later one answers 500
        creates.extend([op] if op == "create" else [])
        return (500, None) if op == "create" and len(creates) > 1 else real_draw(op, random_ops)

    monkeypatch.setattr(fake.faults, "draw", draw)
    assert launch(dataset, volume, "--expert", "both", preset="wan22-t2v-lightning") == 2
    assert "failed with 500" in capsys.readouterr().err
    assert [p["status"] for p in fake.pods.values()] == ["TERMINATED"]


# --- secrets --------------------------------------------------------------------------------------------

def test_no_secret_value_reaches_the_platform_the_registry_or_the_output(dataset, volume, fake, capsys):
    assert launch(dataset, volume, "--image", f"{REGISTRY}/lora-gym-wan21:0.1.0-slim") == 0
    (record,) = runs.all_runs()
    main(["status", record["run_id"]])
    main(["stop", record["run_id"]])
    printed = capsys.readouterr()
    seen = b"".join(fake.raw_bodies).decode() + printed.out + printed.err
    seen += (runs.home() / "runs" / f"{record['run_id']}.json").read_text()
    for secret in (API_KEY, S3_SECRET, HF_SECRET_VALUE):
        assert secret not in seen
    assert fake.created[0]["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_hf_token }}"
    assert set(fake.auth_headers) == {f"Bearer {API_KEY}"}


# --- API errors -----------------------------------------------------------------------------------------

def test_a_wrong_key_is_one_line_naming_runpod_api_key(dataset, volume, fake, monkeypatch, capsys):
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_wrong")
    assert launch(dataset, volume) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "RUNPOD_API_KEY" in err[0] and "401" in err[0]
    assert "rpa_wrong" not in err[0]


def test_missing_keys_fail_before_anything_is_created(dataset, volume, fake, monkeypatch, capsys):
    monkeypatch.delenv("RUNPOD_S3_SECRET_ACCESS_KEY")
    assert launch(dataset, volume) == 2
    assert "RUNPOD_S3_SECRET_ACCESS_KEY" in capsys.readouterr().err and not fake.pods


def test_429_is_retried_after_retry_after(fake):
    fake.faults.fail_next("gpus", 429, retry_after="7")
    waits = []
    api = runpod_api.RunPodAPI(API_KEY, fake.url, sleep=waits.append)
    assert api.gpu_types()[0]["id"] == "NVIDIA H100 80GB HBM3" and waits == [7.0]


def test_5xx_is_retried_then_one_line(fake):
    fake.faults.fail_next("gpus", 503, times=runpod_api.ATTEMPTS)
    waits = []
    with pytest.raises(UserError) as info:
        runpod_api.RunPodAPI(API_KEY, fake.url, sleep=waits.append).gpu_types()
    assert len(waits) == runpod_api.ATTEMPTS - 1 and "503" in str(info.value) and "\n" not in str(info.value)
    fake.faults.fail_next("gpus", 502, times=2)
    assert runpod_api.RunPodAPI(API_KEY, fake.url, sleep=waits.append).gpu_types()


def test_gpu_choice_is_checked_against_the_catalog(fake):
    catalog = runpod_api.RunPodAPI(API_KEY, fake.url).gpu_types()
    assert runpod_gpus.choose_gpu(catalog, None, 80)["id"] == "NVIDIA H100 80GB HBM3"
    assert runpod_gpus.choose_gpu(catalog, "rtx 4090", 24)["id"] == "NVIDIA GeForce RTX 4090"
    with pytest.raises(UserError, match="did you mean 'NVIDIA H100 80GB HBM3'"):
        runpod_gpus.choose_gpu(catalog, "NVIDIA H100 80GB HBM", 80)
    with pytest.raises(UserError, match="has 24 GB, the preset needs a 80 GB GPU"):
        runpod_gpus.choose_gpu(catalog, "NVIDIA L4", 80)
    # Any size (--gpu-memory): the smallest class that holds it; nothing when no class does.
    assert runpod_gpus.choose_gpu(catalog, None, 32)["memory"] >= 32
    assert runpod_gpus.choose_gpu(catalog, None, 20)["id"] == "NVIDIA GeForce RTX 4090"
    with pytest.raises(UserError, match="needs a 200 GB GPU"):
        runpod_gpus.choose_gpu(catalog, None, 200)


def test_the_catalog_kept_for_dry_runs_keeps_runpods_gpu_names(dataset, fake, monkeypatch, tmp_path, capsys):
    """The v2 GpuType's `name` ("RTX 4090") is what --gpu may say besides the id, offline too."""
    monkeypatch.setenv("LORA_GYM_HOME", str(tmp_path / "home"))
    runpod.RunPodBackend().catalog()  # with a key: fetched, then kept for dry runs
    kept = json.loads(runpod_gpus.catalog_cache().read_text())["gpus"]
    assert [g["name"] for g in kept] == [g["name"] for g in runpod_api.RunPodAPI(API_KEY, fake.url).gpu_types()]
    monkeypatch.delenv("RUNPOD_API_KEY")
    assert main(["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(dataset), "--backend", "runpod", "--dry-run",
                 "--gpu", "rtx 4090"]) == 0
    out = capsys.readouterr().out
    assert json_blocks(out)[0]["gpu"]["id"] == "NVIDIA GeForce RTX 4090" and "as fetched" in out


def test_quote_uses_the_catalog_price_and_two_gpus_for_both(dataset, fake):
    from launcher.backends import LaunchOptions
    from launcher.core.job import prepare

    job = prepare("wan22-t2v-lightning", "both", [], dataset)
    quote = runpod.RunPodBackend().quote(job, LaunchOptions(dataset=str(dataset)))
    assert (quote.gpu, quote.usd_per_hour, quote.gpus, quote.parallel) == ("NVIDIA H100 80GB HBM3", 2.69, 2, 2)
    assert quote.source.startswith("RunPod catalog, secure cloud")
    # the two pods train at the same time: the wall clock is half of both trainings' time, billed on two GPUs
    from launcher import cost
    assert cost.estimate(7200, quote).hours == pytest.approx(1 + cost.STARTUP_HOURS)


# --- volume transfers -----------------------------------------------------------------------------------

def test_second_upload_of_an_unchanged_dataset_sends_nothing(dataset, volume):
    client = s3()
    first = runpod_s3.upload_dir(client, volume, dataset, "lora-gym/datasets/x")
    assert first == sum(p.stat().st_size for p in dataset.rglob("*") if p.is_file()) > 0
    assert runpod_s3.upload_dir(client, volume, dataset, "lora-gym/datasets/x") == 0
    caption = next(dataset.rglob("*.txt"))
    caption.write_text("a changed caption", encoding="utf-8")
    assert runpod_s3.upload_dir(client, volume, dataset, "lora-gym/datasets/x") == caption.stat().st_size


def test_big_files_go_up_in_parts(volume, tmp_path, monkeypatch):
    monkeypatch.setattr(runpod_s3, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(runpod_s3, "PART_SIZE", 5 * 1024 * 1024)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    client = s3()
    runpod_s3.upload_files(client, volume, [(big, "big.bin")])
    head = client.head_object(Bucket=volume, Key="big.bin")
    assert head["ETag"].strip('"').endswith("-3") and head["Metadata"]["sha256"]


def test_an_interrupted_download_resumes_from_the_part_file(volume, tmp_path):
    client = s3()
    data = os.urandom(3 * 1024 * 1024)
    client.put_object(Bucket=volume, Key="lora-gym/output/r1/lora.safetensors", Body=data)
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / "lora.safetensors.part").write_bytes(data[:1024 * 1024])  # what an interrupted download left
    ranges = []
    real_get = client.get_object

    def get_object(**kwargs):
        ranges.append(kwargs.get("Range"))
        return real_get(**kwargs)

    client.get_object = get_object
    assert runpod_s3.download_prefix(client, volume, "lora-gym/output/r1", dest) == 1
    assert ranges == [f"bytes={1024 * 1024}-"] and (dest / "lora.safetensors").read_bytes() == data
    assert not (dest / "lora.safetensors.part").exists()
    assert runpod_s3.download_prefix(client, volume, "lora-gym/output/r1", dest) == 0  # complete: skipped


def test_a_volume_key_that_climbs_out_is_refused_before_anything_is_written(volume, tmp_path):
    client = s3()
    client.put_object(Bucket=volume, Key="lora-gym/output/r2/lora.safetensors", Body=b"w")
    client.put_object(Bucket=volume, Key="lora-gym/output/r2/../../../../escape.txt", Body=b"x")
    dest = tmp_path / "dl"
    with pytest.raises(UserError, match="would land outside"):
        runpod_s3.download_prefix(client, volume, "lora-gym/output/r2", dest)
    assert not dest.exists() and not (tmp_path / "escape.txt").exists()


# --- the container side (entrypoints/pod.py) ------------------------------------------------------------

def test_terminate_own_pod_retries_and_never_logs_the_key(fake, capsys):
    fake.add_pod("p1")
    fake.faults.fail_next("delete", 503, times=2)
    waits = []
    env = {"RUNPOD_POD_ID": "p1", "RUNPOD_API_KEY": fake.pod_key("p1"), "RUNPOD_API_BASE_URL": fake.url}
    assert pod_side.terminate_own_pod(env, sleep=waits.append) is True
    assert len(waits) == 2 and fake.pods["p1"]["status"] == "TERMINATED"
    assert fake.endings == [("p1", "terminate", "pod key")]
    assert pod_side.terminate_own_pod(env, sleep=waits.append) is True  # already gone (404) is fine
    assert fake.pod_key("p1") not in capsys.readouterr().err


def test_terminate_own_pod_gives_up_on_a_refused_key_or_no_pod(fake):
    fake.add_pod("p1")
    env = {"RUNPOD_POD_ID": "p1", "RUNPOD_API_KEY": "rpa_wrong", "RUNPOD_API_BASE_URL": fake.url}
    assert pod_side.terminate_own_pod(env, sleep=lambda s: pytest.fail("no retry on 401")) is False
    assert pod_side.terminate_own_pod({}) is False and fake.pods["p1"]["status"] == "RUNNING"
    assert fake.requests[-2:] == [("DELETE", "/v2/pods/p1"), ("POST", "/v2/pods/p1/action")] and not fake.endings


def test_a_pod_key_that_may_not_terminate_stops_the_pod_instead(fake, capsys):
    """RunPod's docs show a pod stopping itself (`runpodctl pod stop $RUNPOD_POD_ID`) and never say whether its
    pod-scoped key may terminate it: if RunPod refuses the terminate, the pod stops, which bills no GPU."""
    fake.add_pod("p1")
    fake.pod_keys_may = {"stop"}
    env = {"RUNPOD_POD_ID": "p1", "RUNPOD_API_KEY": fake.pod_key("p1"), "RUNPOD_API_BASE_URL": fake.url}
    assert pod_side.terminate_own_pod(env, sleep=lambda s: pytest.fail("no retry on 403")) is True
    assert fake.endings == [("p1", "stop", "pod key")] and fake.pods["p1"]["status"] == "EXITED"
    assert "RunPod refused to terminate pod p1" in capsys.readouterr().err
    fake.add_pod("p2")
    fake.pod_keys_may = set()  # neither: the pod says so, and the caller tells the user to end it by hand
    env |= {"RUNPOD_POD_ID": "p2", "RUNPOD_API_KEY": fake.pod_key("p2")}
    assert pod_side.terminate_own_pod(env, sleep=lambda s: pytest.fail("no retry on 403")) is False
    assert fake.pods["p2"]["status"] == "RUNNING" and len(fake.endings) == 1


def test_the_deadline_fires_and_can_be_cancelled():
    fired = threading.Event()
    timer = pod_side.start_deadline(0.2 / 3600, fired.set)
    assert timer.daemon and fired.wait(5)
    later = pod_side.start_deadline(1, lambda: pytest.fail("cancelled"))
    later.cancel()
    assert pod_side.start_deadline(None, fired.set) is None and pod_side.start_deadline(0, fired.set) is None


def test_pod_module_needs_only_the_standard_library():
    script = ("import sys; import lora_gym_entrypoint.pod; "
              "print(sorted(m for m in ('httpx', 'requests', 'boto3', 'launcher') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env(),
                            cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_a_gpu_without_capacity_moves_on_to_the_next_candidate(dataset, volume, fake, capsys):
    fake.sold_out = {"NVIDIA GeForce RTX 4090"}
    assert launch(dataset, volume) == 0
    (body,) = fake.created
    assert body["gpu"]["id"] == "NVIDIA L4"
    (record,) = runs.all_runs()
    assert record["pods"][0]["gpu"] == "NVIDIA L4" and record["pods"][0]["usd_per_hour"] == 0.43
    assert "did not place NVIDIA GeForce RTX 4090 in US-KS-2 (400); trying the next GPU" in capsys.readouterr().err


def test_no_gpu_with_capacity_is_one_line_and_nothing_left_running(dataset, volume, fake, capsys):
    fake.sold_out = {"NVIDIA GeForce RTX 4090", "NVIDIA L4", "NVIDIA A100 80GB PCIe", "NVIDIA H100 80GB HBM3"}
    assert launch(dataset, volume, "--expert", "both", "--gpu-memory", "24", preset="wan22-t2v-lightning") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: RunPod placed none of NVIDIA GeForce RTX 4090: 400, NVIDIA L4: 400, "
                              "NVIDIA H100 80GB HBM3: 400, NVIDIA A100 80GB PCIe: 400 in US-KS-2")
    assert sum(line.startswith("error:") for line in err) == 1 and not fake.created
    assert all(p["status"] == "TERMINATED" for p in fake.pods.values())


def test_an_explicit_gpu_is_never_swapped_for_another(dataset, volume, fake, capsys):
    fake.sold_out = {"NVIDIA GeForce RTX 4090"}
    assert launch(dataset, volume, "--gpu", "NVIDIA GeForce RTX 4090") == 2
    assert not fake.created and "placed none of NVIDIA GeForce RTX 4090: 400" in capsys.readouterr().err


def test_a_launch_pins_the_image_tag_to_the_digest_its_registry_names(dataset, volume, fake, capsys, monkeypatch):
    from fakes.fake_registry import serving

    image = "ghcr.io/you/lora-gym-wan21:0.1.0-slim"
    with serving(monkeypatch, "you/lora-gym-wan21", "0.1.0-slim") as registry:
        assert launch(dataset, volume, "--image", image) == 0
    digest = registry.digest("you/lora-gym-wan21", "0.1.0-slim")
    [body] = fake.created
    assert body["image"] == body["env"]["LORA_GYM_IMAGE"] == f"{image}@{digest}"
    assert body["env"]["HF_TOKEN"] == runpod_pods.HF_SECRET  # still a slim image: its tag is kept before the digest
    [record] = runs.all_runs()
    assert record["reproduce"]["image"] == {"ref": f"{image}@{digest}", "digest": digest, "source": "reference"}
    assert f"image: {image} is {digest}" in capsys.readouterr().err
