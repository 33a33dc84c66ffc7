"""`launcher sweep --backend modal` offline: the request as data, the real modal objects built from it, the
`sweep` orchestrator's order and failures with stand-in functions, the budget, the record and status/pull
through a stand-in outputs volume. Modal is never reached (test_modal_backend's autouse _offline fixture)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import modal
import pytest
from conftest import EXAMPLE_DATASET
from test_modal_backend import IMAGE, _offline  # noqa: F401  (autouse: no Modal client can be made)

from launcher import runs
from launcher.backends import LaunchOptions, modal_app
from launcher.cli.main import main
from launcher.sweep import grid, modal_sweep
from launcher.sweep.prepare import prepare_sweep

DS = str(EXAMPLE_DATASET)
GRID = ["--grid", "experts.low.learning_rate=5e-5,8e-5,1e-4", "--grid", "experts.low.network_dim=32,42"]


def planned(expert="low", axes=("experts.low.learning_rate=5e-5,1e-4",)):
    return prepare_sweep("wan22-t2v-lightning", expert, (), DS, grid.combine(axes, None), sweep_id="sw")


def options(**kw):
    return LaunchOptions(dataset=DS, image=IMAGE, **kw)


def sweep_cli(*extra):
    return ["sweep", "--preset", "wan22-t2v-lightning", "--expert", "low", "--dataset", DS, *GRID, "--backend",
            "modal", "--image", IMAGE, *extra]


def test_dry_run_is_one_cache_call_and_one_training_call_per_combination(capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SweepSecret")
    assert main(sweep_cli("--dry-run")) == 0
    out = capsys.readouterr().out
    assert "6 runs of wan22-t2v-lightning, 1 cache pass" in out and "hf_SweepSecret" not in out
    data = json.loads(out[out.index("\n{") + 1:])
    stages = [c["env"]["LORA_GYM_STAGE"] for c in data["calls"]]
    assert stages == ["cache"] + ["train"] * 6
    run_ids = [c["env"]["LORA_GYM_RUN_ID"] for c in data["calls"]]
    assert len(set(run_ids)) == 7 and data["platform_calls"][-1].startswith("sweep.spawn([1 x (cache, env), 6 x")
    assert data["cache_timeout_s"] + data["timeout_s"] <= 24 * 3600 and data["orchestrator_timeout_s"] == 24 * 3600
    sets = {c["env"]["LORA_GYM_SET"] for c in data["calls"][1:]}
    assert len(sets) == 6 and "experts.low.learning_rate=1e-4 experts.low.network_dim=42" in sets


def test_real_objects_register_the_sweep_orchestrator():
    spec = modal_sweep.spec(planned(), options(max_hours=6))
    app, functions, _ = modal_app.build(spec)
    assert set(functions) == {"cache", "train", "sweep"}
    assert spec.cache_timeout_s + spec.timeout_s == 6 * 3600  # one run's limit, shared as in `--expert both`
    assert functions["train"]._spec_.gpus == "H100" and functions["sweep"]._spec_.gpus is None


class Fn:
    """A stand-in Modal Function: spawn records the order; a call fails with StageFailed when told to."""

    def __init__(self, log, fail_runs=()):
        self.log, self.fail_runs = log, fail_runs

    def spawn(self, env, dataset, preset_toml, volumes):
        self.log.append(("spawn", env["LORA_GYM_RUN_ID"]))

        def get(timeout=None):
            self.log.append(("done", env["LORA_GYM_RUN_ID"]))
            if env["LORA_GYM_RUN_ID"] in self.fail_runs:
                raise modal_app.StageFailed(env["LORA_GYM_RUN_ID"], 7)
            return {"run": env["LORA_GYM_RUN_ID"]}
        return SimpleNamespace(get=get)


def test_orchestrator_caches_first_then_spawns_every_training_before_waiting():
    log = []
    calls = [(Fn(log), c.env) for c in modal_sweep.spec(planned(), options()).calls]
    results = modal_app.sweep(calls, {}, None)
    assert log[:2] == [("spawn", "sw-cache1"), ("done", "sw-cache1")]
    assert log[2:4] == [("spawn", "sw-01"), ("spawn", "sw-02")]  # both trainings run at once
    assert [r["run"] for r in results] == ["sw-cache1", "sw-01", "sw-02"]


def test_a_failed_training_lets_the_others_finish_then_fails_the_sweep():
    log = []
    calls = [(Fn(log, fail_runs=("sw-01",)), c.env) for c in modal_sweep.spec(planned(), options()).calls]
    with pytest.raises(modal_app.StageFailed) as failed:
        modal_app.sweep(calls, {}, None)
    assert ("done", "sw-02") in log and failed.value.exit_code == 7


def test_a_grid_that_changes_the_gpu_class_is_refused():
    sweep = prepare_sweep("wan22-t2v-lightning", "low", (), DS,
                          grid.combine(["resources.gpu_memory_gb=24,80"], None), sweep_id="g")
    with pytest.raises(Exception, match="several GPU types"):
        modal_sweep.spec(sweep, options())


def test_max_cost_is_for_the_whole_sweep_and_refuses_before_anything_starts(monkeypatch, capsys):
    started = []
    monkeypatch.setattr(modal_app, "start", lambda *a: started.append(a) or {"app_id": "ap", "call_id": "fc"})
    assert main(sweep_cli("--max-cost", "0.5")) == 2
    err = capsys.readouterr().err
    assert "estimate: 6 runs + 1 cache pass" in err and "over --max-cost 0.5" in err and not started
    assert not [r for r in runs.all_runs() if r.get("kind") == "sweep"]
    [line] = err.splitlines()  # the refusal alone, carrying the estimate
    total = float(line.split("= $")[1].split()[0])
    # the sum of six one-GPU runs (each at least the start-up allowance) and one cache pass, at H100's price
    assert total >= 7 * 0.25 * modal_sweep.modal_backend.PRICES["H100"] - 0.01


def test_launch_records_the_sweep_and_status_reads_each_run_json(monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", "hf_SweepSecret")
    captured = []
    monkeypatch.setattr(modal_app, "start",
                        lambda spec, root, vol: captured.append(spec) or {"app_id": "ap-9", "call_id": "fc-9"})
    assert main(sweep_cli("--no-check")) == 0
    [record] = [r for r in runs.all_runs() if r.get("kind") == "sweep"]
    assert record["app_id"] == "ap-9" and len(record["runs"]) == 6 and "hf_SweepSecret" not in json.dumps(record)
    assert captured[0].orchestrator == "sweep" and captured[0].run_id == record["run_id"]
    first = record["runs"][0]["run_id"]
    manifests = {first: {"status": "succeeded", "started_at": "2026-11-29T00:00:00+00:00",
                         "ended_at": "2026-11-29T02:00:00+00:00", "training": {"train-low": {"epochs": 50}}}}

    class Volume:
        def read_file(self, path):
            run_id = path.split("/")[0]
            if run_id not in manifests:
                raise modal.exception.NotFoundError(path)
            yield json.dumps(manifests[run_id]).encode()

    monkeypatch.setattr(modal.Volume, "from_name", lambda name: Volume())
    capsys.readouterr()
    assert main(["status", record["run_id"]]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert len(rows) == 1 + 1 + 6
    done = next(r for r in rows if r.startswith(first + " "))
    assert "succeeded" in done and "50/50" in done and "$7.90" in done  # 2 h on one H100
    assert sum("not started" in r for r in rows) == 6  # the cache pass and five runs have no run.json yet


def test_pull_fetches_every_run_of_the_sweep_and_says_which_has_nothing(tmp_path, monkeypatch, capsys):
    from modal.volume import FileEntryType

    record = {"run_id": "sw", "kind": "sweep", "backend": "modal", "outputs_volume": "lora-gym-outputs",
              "caches": ["sw-cache1"], "runs": [{"run_id": "sw-01", "grid": []}, {"run_id": "sw-02", "grid": []}]}
    files = {"sw-01/lora.safetensors": b"one", "sw-01/run.json": b"{}"}

    class Outputs:
        def listdir(self, path, recursive=False):
            return [SimpleNamespace(path=p, type=FileEntryType.FILE, size=len(b)) for p, b in files.items()
                    if p.startswith(path + "/")]

        def read_file_into_fileobj(self, path, handle):
            handle.write(files[path])

    monkeypatch.setattr(modal.Volume, "from_name", lambda name: Outputs())
    runs.save(record)
    assert main(["pull", "sw", str(tmp_path)]) == 1  # sw-02 has no outputs yet
    assert (tmp_path / "sw-01" / "lora.safetensors").read_bytes() == b"one"
    assert "error: run sw-02 has no outputs yet" in capsys.readouterr().err
    files["sw-02/lora.safetensors"] = b"two"
    assert main(["pull", "sw", str(tmp_path)]) == 0 and (tmp_path / "sw-02" / "lora.safetensors").is_file()
    assert (tmp_path / "sw-01" / "report.html").is_file()  # every pulled run folder gets its report


def test_a_sweep_launch_pins_the_image_tag_to_its_digest(monkeypatch, capsys):
    from fakes.fake_registry import serving

    captured = []
    monkeypatch.setattr(modal_app, "start", lambda spec, root, vol: captured.append(spec) or {"app_id": "ap-9",
                                                                                            "call_id": "fc-9"})
    with serving(monkeypatch, "you/lora-gym-wan22", "0.1.0") as registry:
        assert main(sweep_cli("--no-check")) == 0
    pinned = f"{IMAGE}@{registry.digest('you/lora-gym-wan22', '0.1.0')}"
    assert captured[0].image == pinned
    [record] = [r for r in runs.all_runs() if r.get("kind") == "sweep"]
    assert record["image"] == pinned
