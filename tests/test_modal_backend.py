"""`--backend modal` offline: the spec as data, the real modal objects built from it, the container-side body
run locally against a fake entrypoint, the content-addressed upload, the run record and the verbs at the SDK
boundary. Modal is never reached: an autouse fixture makes any remote call fail at once."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import modal
import modal.client
import pytest
from conftest import EXAMPLE_DATASET, clean_env

from launcher import cost, runs
from launcher.backends import LaunchOptions, modal_app, modal_backend, modal_runs
from launcher.core.errors import UserError
from launcher.core.job import prepare

IMAGE = "ghcr.io/you/lora-gym-wan22:0.1.0"
FAKE_ENTRYPOINT = """#!/bin/sh
echo "[cache_latents] expert=$LORA_GYM_EXPERT stage=$LORA_GYM_STAGE"
echo "[train] dataset: $(ls "$LORA_GYM_DATASET_DIR" | tr '\\n' ' ')"
exit "${FAKE_EXIT:-0}"
"""


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No MODAL_* setting from the host, empty tokens, and any client creation fails fast (a remote call with
    fake tokens would otherwise hang for about a minute)."""
    for name in [n for n in os.environ if n.startswith("MODAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("MODAL_TOKEN_ID", "")
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "")

    async def no_network(*args, **kwargs):
        raise RuntimeError("test tried to reach Modal")

    monkeypatch.setattr(modal.client._Client, "from_env", no_network)
    monkeypatch.setattr(modal.client._Client, "from_credentials", no_network)


def job_and_options(preset="wan22-t2v-lightning", expert="high", overrides=(), dataset=EXAMPLE_DATASET, **options):
    job = prepare(preset, expert, overrides, dataset)
    return job, LaunchOptions(dataset=str(dataset), image=options.pop("image", IMAGE), **options)


def spec_for(*args, **kwargs):
    return modal_backend.modal_spec(*job_and_options(*args, **kwargs))


# --- the request as data ----------------------------------------------------------------------------------

def test_host_ram_follows_the_plan():
    # Block swap and activation offload at 24 GB hold the DiT and activations in host RAM: ask for more.
    roomy, tight = spec_for(), spec_for(overrides=["resources.gpu_memory_gb=24"])
    plan = prepare("wan22-t2v-lightning", "high", (), EXAMPLE_DATASET).plan
    assert roomy.memory_mib == plan.resources.host_memory_gb * 1024
    assert tight.memory_mib > roomy.memory_mib
    assert tight.gpu == "L4"


def test_gpu_comes_from_the_preset_class_or_gpu():
    assert spec_for().gpu == "H100"
    assert spec_for("wan21-t2v-1.3b", None).gpu == "L4"
    assert spec_for(gpu_type="a100-80gb").gpu == "A100-80GB"
    assert spec_for("wan21-t2v-1.3b", None, gpu_type="a10").gpu == "A10"
    with pytest.raises(UserError, match="has 24 GB, the preset needs 80 GB"):
        spec_for(gpu_type="L4")
    for retired in ("V100", "A10G"):  # A10G: Modal's former name of the A10 (modal.com/docs/guide/gpu)
        with pytest.raises(UserError, match="not one this launcher prices: use one of .*A10"):
            spec_for("wan21-t2v-1.3b", None, gpu_type=retired)


def test_every_priced_gpu_names_its_source():
    assert set(modal_backend.PRICES) == set(modal_backend.GPU_MEMORY_GB)
    for gpu in modal_backend.PRICES:
        job, options = job_and_options("wan21-t2v-1.3b", None, gpu_type=gpu)
        assert "modal.com/pricing" in modal_backend.quote(job, options).source
    job, options = job_and_options("wan21-t2v-1.3b", None, gpu_type="A10")
    assert "not verified" in modal_backend.quote(job, options).source


def test_timeout_is_the_tightest_limit_within_24_hours():
    job, options = job_and_options("wan21-t2v-1.3b", None, max_hours=2)
    assert modal_backend.timeout_s(job, options) == 7200
    job, options = job_and_options("wan21-t2v-1.3b", None, max_cost=0.7992)  # one L4 hour
    assert modal_backend.timeout_s(job, options) == 3600
    job, options = job_and_options("wan21-t2v-1.3b", None, ["resources.time_limit_hours=24"])
    assert modal_backend.timeout_s(job, options) == 24 * 3600
    with pytest.raises(UserError, match="over Modal's 24 h limit"):
        modal_backend.timeout_s(*job_and_options(max_hours=30))


def test_quote_uses_the_price_table_and_two_gpus_for_both():
    job, options = job_and_options(expert="both")
    q = modal_backend.ModalBackend().quote(job, options)
    assert (q.gpu, q.usd_per_hour, q.gpus) == ("H100", modal_backend.PRICES["H100"], 2)
    assert "modal.com/pricing" in q.source
    # 3600 s of training in all: the two experts' 30 minutes each, at the same time, on two GPUs (+ start-up)
    assert q.parallel == 2 and cost.estimate(3600, q).usd == pytest.approx((0.5 + cost.STARTUP_HOURS) * 3.9492 * 2)
    single = modal_backend.ModalBackend().quote(*job_and_options(expert="high"))
    assert single.parallel == 1 and cost.estimate(3600, single).usd == pytest.approx(1.25 * 3.9492)


def test_both_is_a_cache_pass_then_two_experts_then_the_pairs_samples():
    spec = spec_for(expert="both", overrides=["train.max_train_epochs=20"])
    assert [c.function for c in spec.calls] == ["cache", "train_high", "train_low", "samples"]
    cache, high, low, samples = (c.env for c in spec.calls)
    assert cache["LORA_GYM_STAGE"] == "cache" and cache["LORA_GYM_EXPERT"] == "both"
    assert (high["LORA_GYM_EXPERT"], low["LORA_GYM_EXPERT"]) == ("high", "low")
    assert high["LORA_GYM_STAGE"] == low["LORA_GYM_STAGE"] == "train"  # the cache pass did the rest
    assert {c.env["LORA_GYM_OUTPUT_DIR"] for c in spec.calls} == {f"/output/{spec.run_id}"}
    assert all(c.env["LORA_GYM_SET"] == "train.max_train_epochs=20" for c in spec.calls)
    # each expert names the other's folder; the samples reopen the low expert's run once both have trained
    assert (high["LORA_GYM_PAIR_DIR"], low["LORA_GYM_PAIR_DIR"]) == (f"/output/{spec.run_id}/low",
                                                                     f"/output/{spec.run_id}/high")
    assert samples == low | {"LORA_GYM_STAGE": "samples"}
    off = spec_for(expert="both", overrides=["samples.enabled=false"])
    assert [c.function for c in off.calls] == ["cache", "train_high", "train_low"] and off.samples_timeout_s is None


def test_single_run_env_and_volumes():
    spec = spec_for(run_id="my-run", cache_volume="my-cache")
    (call,) = spec.calls
    assert call.env == {"LORA_GYM_PRESET": "wan22-t2v-lightning", "LORA_GYM_IMAGE": spec.image,
                        "LORA_GYM_EXPERT": "high",
                        "LORA_GYM_DATASET_DIR": "/tmp/lora-gym/dataset", "LORA_GYM_CACHE_DIR": "/cache",
                        "LORA_GYM_CACHE_LOCK": "none", "LORA_GYM_OUTPUT_DIR": "/output", "LORA_GYM_RUN_ID": "my-run"}
    assert spec.volumes == {"/datasets": "lora-gym-datasets", "/cache": "my-cache", "/output": "lora-gym-outputs"}
    assert len(spec.dataset) == 12 and all(len(sha) == 64 for sha in spec.dataset.values())


def test_a_preset_file_travels_as_text(tmp_path):
    preset = tmp_path / "mine.toml"
    preset.write_text((Path(__file__).parent.parent / "presets" / "wan21-t2v-1.3b.toml").read_text())
    spec = spec_for(str(preset), None)
    assert spec.calls[0].env["LORA_GYM_PRESET"] == "/tmp/lora-gym/presets/mine.toml"
    assert spec.preset_toml == preset.read_text()


def test_a_local_tag_is_refused_with_the_push_command(monkeypatch):
    monkeypatch.delenv("LORA_GYM_REGISTRY", raising=False)
    with pytest.raises(UserError, match="make push-wan22 REGISTRY="):
        spec_for(image=None)


def test_dry_run_shows_the_request_without_secret_values_or_modal():
    env = clean_env(HF_TOKEN="hf_Secret", LORA_GYM_MODAL_REGISTRY_SECRET="ghcr-creds")
    result = subprocess.run([str(Path(sys.executable).parent / "launcher"), "run", "--preset", "wan22-t2v-lightning",
                             "--expert", "both", "--dataset", str(EXAMPLE_DATASET), "--backend", "modal",
                             "--image", IMAGE, "--dry-run"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert "hf_Secret" not in result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["image"] == IMAGE and data["gpu"] == "H100" and data["secrets"] == ["lora-gym-hf"]
    assert data["registry_secret"] == "ghcr-creds"
    assert data["cache_timeout_s"] + data["timeout_s"] + data["samples_timeout_s"] <= 24 * 3600
    assert data["orchestrator_timeout_s"] == 24 * 3600
    assert data["timeouts"].startswith("cache pass 3 h + trainings 16.5 h + samples of the pair 3 h = 22.5 h, within "
                                       "the run's limit")
    assert data["platform_calls"][-1].endswith("then samples (both LoRAs)")
    assert data["platform_calls"][-1].startswith("both.spawn(") and "volumes" in data["platform_calls"][-1]
    assert "commit()" in data["in_each_stage"]


# --- the real modal objects -------------------------------------------------------------------------------

def test_real_objects_carry_the_spec(monkeypatch):
    pulled = []
    original = modal.Image.from_registry
    monkeypatch.setattr(modal.Image, "from_registry",
                        lambda tag, secret=None, **kw: pulled.append((tag, secret)) or original(tag, secret=secret))
    monkeypatch.setenv("LORA_GYM_MODAL_REGISTRY_SECRET", "ghcr-creds")
    spec = spec_for(expert="both", max_hours=5)
    app, functions, volumes = modal_app.build(spec)
    assert isinstance(app, modal.App) and set(functions) == {"cache", "train_high", "train_low", "samples", "both"}
    train = functions["train_high"]._spec_
    assert train.gpus == "H100"
    assert train.memory == spec.memory_mib  # the plan's host RAM, in MiB
    assert {path: vol.name for path, vol in train.volumes.items()} == spec.volumes
    assert [s.name for s in train.secrets] == ["lora-gym-hf"]
    assert functions["both"]._spec_.gpus is None and not functions["both"]._spec_.volumes  # it only waits
    assert pulled[0][0] == IMAGE and pulled[0][1].name == "ghcr-creds"
    assert spec.cache_timeout_s + spec.timeout_s + spec.samples_timeout_s == 5 * 3600


@pytest.mark.parametrize(("keys", "kind"), [
    ({"REGISTRY_USERNAME", "REGISTRY_PASSWORD"}, "REGISTRY_AUTH_TYPE_STATIC_CREDS"),  # GHCR, Docker Hub
    ({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"}, "REGISTRY_AUTH_TYPE_AWS"),  # ECR
    ({"SERVICE_ACCOUNT_JSON"}, "REGISTRY_AUTH_TYPE_GCP")])
def test_registry_secret_keys_are_the_ones_the_sdk_reads(keys, kind):
    """Image.from_registry(secret=) infers the kind of registry login from the secret's keys (modal 1.6.4,
    modal/_image.py _infer_registry_auth_type): docs/modal.md's examples, run through the SDK's own code."""
    from modal._image import _infer_registry_auth_type
    from modal_proto import api_pb2

    assert _infer_registry_auth_type(keys) == getattr(api_pb2, kind)
    with pytest.raises(modal.exception.InvalidError, match="REGISTRY_USERNAME and REGISTRY_PASSWORD"):
        _infer_registry_auth_type({"GHCR_TOKEN"})


@pytest.mark.filterwarnings("ignore:The train function is executing locally")
def test_function_local_runs_the_entrypoint_and_fails_with_its_exit_code(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "lora-gym-entrypoint"
    fake.write_text(FAKE_ENTRYPOINT)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    blobs = tmp_path / "volume" / "by-sha256"
    blobs.mkdir(parents=True)
    (blobs / "abc").write_text("a caption")
    env = {"LORA_GYM_PRESET": "wan22-t2v-lightning", "LORA_GYM_EXPERT": "high",
           "LORA_GYM_DATASET_DIR": str(tmp_path / "ds"), "LORA_GYM_OUTPUT_DIR": str(tmp_path / "out")}
    out = io.StringIO()
    result = modal_app.run_stage(env, {"images/a.txt": "abc"}, blobs=blobs, out=out)
    assert result["exit_code"] == 0 and "[train] dataset: images" in out.getvalue()
    assert (tmp_path / "ds" / "images" / "a.txt").read_text() == "a caption"
    monkeypatch.setenv("FAKE_EXIT", "3")
    with pytest.raises(modal_app.StageFailed) as failed:
        modal_app.run_stage(env, {}, out=io.StringIO())
    assert failed.value.exit_code == 3 and "exited with code 3" in str(failed.value)
    # The registered Function's own .local() runs the same body.
    _, functions, _ = modal_app.build(spec_for())
    with pytest.raises(modal_app.StageFailed):
        functions["train"].local(env, {})
    monkeypatch.setenv("FAKE_EXIT", "0")
    assert functions["train"].local(env, {})["stage"] == "high"


# --- the upload -------------------------------------------------------------------------------------------

class FakeVolume:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.batches = 0

    def listdir(self, path, recursive=False):
        return [SimpleNamespace(path=p) for p in self.files if p.startswith(path + "/")]

    def batch_upload(self, force=False):
        volume = self

        class Batch:
            def __enter__(self):
                volume.batches += 1
                return self

            def put_file(self, local, remote):
                volume.files[remote] = Path(local).read_bytes()

            def __exit__(self, *exc):
                return False
        return Batch()


def test_upload_sends_only_missing_content(dataset):
    job, options = job_and_options(dataset=dataset)
    volume = FakeVolume()
    files = modal_backend.dataset_files(dataset, job)
    total = sum(size for _, size in files.values())
    assert modal_app.upload_dataset(volume, dataset, files) == total
    assert modal_app.upload_dataset(volume, dataset, files) == 0 and volume.batches == 1  # unchanged: 0 bytes
    (dataset / "images" / "zorbix_beach_wave.txt").write_text("zorbix waves on a beach at noon")
    changed = modal_backend.dataset_files(dataset, job)
    assert modal_app.upload_dataset(volume, dataset, changed) == len("zorbix waves on a beach at noon")


# --- launching and the verbs ------------------------------------------------------------------------------

def test_launch_without_a_token_says_modal_token_new(tmp_path, monkeypatch):
    monkeypatch.setattr(modal_app, "has_token", lambda: False)
    with pytest.raises(UserError, match="modal token new"):
        modal_app.start(spec_for(), EXAMPLE_DATASET, "lora-gym-datasets")


def test_launch_saves_ids_and_no_secrets(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORA_GYM_HOME", str(tmp_path))
    monkeypatch.setenv("HF_TOKEN", "hf_Secret")
    monkeypatch.setattr(modal_app, "start", lambda spec, root, volume: {"app_id": "ap-1", "call_id": "fc-1"})
    monkeypatch.setattr(modal_backend, "first_lines", lambda record, count, wait: print("[cache] starting"))
    job, options = job_and_options(expert="both", run_id="r1")
    assert modal_backend.ModalBackend().launch(job, options) == 0
    record = runs.load("r1")
    assert (record["app_id"], record["call_id"], record["gpus"]) == ("ap-1", "fc-1", 2)
    assert "hf_Secret" not in json.dumps(record)
    assert "[cache] starting" in capsys.readouterr().out


class FakeCall:
    def __init__(self, result=None, error=None):
        self.result, self.error = result, error

    def get(self, timeout=None):
        if self.error:
            raise self.error
        return self.result

    def get_call_graph(self):
        child = SimpleNamespace(function_name="train_high", status=SimpleNamespace(name="PENDING"),
                                function_call_id="fc-h", children=[])
        return [SimpleNamespace(function_name="both", children=[child])]


class FakeApp:
    stopped: list = []

    def __init__(self, app_id):
        self.app_id = app_id
        entries = [SimpleNamespace(message="[train] step 1\n"), SimpleNamespace(message="[train] step 2\n")]
        self.logs = SimpleNamespace(stream=lambda timeout=None: iter(entries), tail=lambda n: iter(entries[-n:]))

    def stop(self):
        FakeApp.stopped.append(self.app_id)


RECORD = {"run_id": "r1", "backend": "modal", "app_id": "ap-1", "call_id": "fc-1", "expert": "both", "gpu": "H100",
          "gpus": 2, "usd_per_hour": 3.9492}


class ProgressVolume:
    """The outputs volume with one expert's progress.json: the other has not written one yet."""

    files = {"r1/high/progress.json": json.dumps({
        "stage": "train-high", "status": "running", "updated_at": "2026-11-29T01:00:00+00:00",
        "current": {"epoch": 2, "epochs": 4, "step": 7, "steps": 12, "it_per_s": 0.5, "loss_avg": 0.09, "eta_s": 10}})}

    def read_file(self, path):
        from modal.exception import NotFoundError

        if path not in self.files:
            raise NotFoundError(f"{path} not found")
        yield self.files[path].encode()


def test_status_shows_each_experts_progress_from_the_volume(monkeypatch):
    monkeypatch.setattr(modal.Volume, "from_name", lambda name: ProgressVolume())
    monkeypatch.setattr(modal.FunctionCall, "from_id", lambda call_id: FakeCall(error=TimeoutError()))
    rows = modal_backend.status(RECORD)
    assert rows["progress high"].startswith("train-high: epoch 2/4, step 7/12 (58%), 2.00 s/it, loss 0.09, ETA 0:00:10")
    assert "updated" in rows["progress high"] and "progress low" not in rows
    single = modal_runs.progress_rows(RECORD | {"expert": "high", "run_id": "r1/high"})
    assert list(single) == ["progress"]


def test_status_logs_and_stop_use_the_sdk(monkeypatch, capsys):
    monkeypatch.setattr(modal.Volume, "from_name", lambda name: ProgressVolume())
    monkeypatch.setattr(modal.App, "lookup", FakeApp)
    monkeypatch.setattr(modal.FunctionCall, "from_id", lambda call_id: FakeCall(error=TimeoutError()))
    rows = modal_backend.status(RECORD)
    assert rows["state"] == "running" and rows["train_high"] == "PENDING (fc-h)" and "7.90" in rows["$/h"]
    assert modal_backend.logs(RECORD, follow=False) == 0 and "[train] step 2" in capsys.readouterr().out
    monkeypatch.setattr(modal.FunctionCall, "from_id",
                        lambda call_id: FakeCall(error=modal_app.StageFailed("train_high", 3)))
    assert modal_backend.logs(RECORD, follow=True) == 3
    assert "failed" in modal_backend.status(RECORD)["state"]
    FakeApp.stopped = []
    assert modal_backend.stop(RECORD) == 0 and FakeApp.stopped == ["ap-1"]


def test_pull_downloads_the_run_folder(tmp_path, monkeypatch):
    from modal.volume import FileEntryType

    files = {"r1/high/lora.safetensors": b"weights", "r1/high/run.json": b"{}"}

    class Outputs:
        def listdir(self, path, recursive=False):
            assert (path, recursive) == ("r1", True)
            return [SimpleNamespace(path=p, type=FileEntryType.FILE, size=len(b)) for p, b in files.items()]

        def read_file_into_fileobj(self, path, handle):
            handle.write(files[path])

    monkeypatch.setattr(modal.Volume, "from_name", lambda name: Outputs())
    assert modal_backend.pull(RECORD, str(tmp_path)) == 0
    assert (tmp_path / "r1" / "high" / "lora.safetensors").read_bytes() == b"weights"


def test_a_launch_pins_the_image_tag_to_the_digest_its_registry_names(monkeypatch, capsys):
    from fakes.fake_registry import serving

    from launcher.cli.main import main

    started = []
    monkeypatch.setattr(modal_app, "start", lambda spec, root, volume: started.append(spec) or {"app_id": "ap-1",
                                                                                              "call_id": "fc-1"})
    monkeypatch.setattr(modal_backend, "first_lines", lambda record, count, wait: None)
    with serving(monkeypatch, "you/lora-gym-wan22", "0.1.0") as registry:
        assert main(["run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", str(EXAMPLE_DATASET),
                     "--backend", "modal", "--no-check", "--image", IMAGE]) == 0
    digest = registry.digest("you/lora-gym-wan22", "0.1.0")
    [spec] = started  # Modal builds `FROM <image>` (modal/_image.py from_registry): a digest is pulled as such
    assert spec.image == f"{IMAGE}@{digest}" and {c.env["LORA_GYM_IMAGE"] for c in spec.calls} == {spec.image}
    [record] = runs.all_runs()
    assert record["image"] == spec.image
    assert record["reproduce"]["image"] == {"ref": spec.image, "digest": digest, "source": "reference"}
    assert f"image: {IMAGE} is {digest}" in capsys.readouterr().err
