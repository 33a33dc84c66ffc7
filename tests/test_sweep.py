"""`launcher sweep`: the grid, its refusals, the runs it plans, and a local sweep run end to end through the real
entrypoint and the musubi-tuner test double (tests/fakes), with the container engine replaced by a stand-in that
runs each ContainerSpec as a process with the spec's environment and mounts."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET
from test_entrypoint import Container

from launcher import runs
from launcher.cli.main import main
from launcher.core.errors import UserError
from launcher.sweep import grid, local_sweep
from launcher.sweep.prepare import prepare_sweep

DS = str(EXAMPLE_DATASET)


def sweep_cli(*args: str) -> list[str]:
    return ["sweep", "--preset", "wan21-t2v-1.3b", "--dataset", DS, *args]


# --- the grid ---------------------------------------------------------------------------------------------

def test_grid_options_expand_to_every_combination_first_axis_slowest():
    axes = grid.combine(["train.learning_rate=5e-5,1e-4", "train.network_dim=16,32,48"], None)
    combos = grid.combinations(axes)
    assert len(combos) == 6 and len(set(combos)) == 6
    assert combos[0] == ("train.learning_rate=5e-5", "train.network_dim=16")
    assert combos[3] == ("train.learning_rate=1e-4", "train.network_dim=16")


def test_grid_file_takes_dotted_keys_and_nested_tables(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('[grid]\n"train.learning_rate" = [5e-5, 0.0001]\ntrain.network_dim = [16, 32]\n'
                    "[grid.resources]\ngpu_memory_gb = [24, 80]\n")
    axes = grid.read_file(path)
    assert {a.key: a.values for a in axes} == {"train.learning_rate": ("5e-05", "0.0001"),
                                               "train.network_dim": ("16", "32"),
                                               "resources.gpu_memory_gb": ("24", "80")}


def test_more_than_64_runs_needs_yes():
    axes = grid.combine(["train.seed=" + ",".join(str(n) for n in range(65))], None)
    with pytest.raises(UserError, match="65 runs.*--yes"):
        grid.combinations(axes)
    assert len(grid.combinations(axes, yes=True)) == 65


BAD = {
    "unknown key": (["--grid", "train.lerning_rate=1e-4,2e-4"], "did you mean 'train.learning_rate'"),
    "empty value": (["--grid", "train.learning_rate=1e-4,"], "empty value"),
    "no values": (["--grid", "train.learning_rate="], "empty value"),
    "no equals": (["--grid", "train.learning_rate"], "is not KEY=V1,V2"),
    "nan": (["--grid", "train.learning_rate=1e-4,nan"], "finite number"),
    "inf": (["--grid", "train.learning_rate=inf"], "finite number"),
    "twice": (["--grid", "train.seed=1,2", "--grid", "train.seed=3"], "given twice"),
    "repeated value": (["--grid", "train.seed=1,1"], "a value twice"),
    "no grid": ([], "needs a grid"),
    "too many": (["--grid", "train.seed=" + ",".join(str(n) for n in range(70))], "--yes"),
    "no backend": (["--grid", "train.seed=1,2"], "no backend (cannot reach Docker or Podman"),
    "bad --set": (["--grid", "train.seed=1,2", "--set", "train.seed=-1"], "train.seed"),
    "no sweep backend": (["--grid", "train.seed=1,2", "--backend", "skypilot"], "has no SkyPilot backend"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_grids_are_one_error_line_and_write_nothing(case, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/lora-gym-test.sock")  # "no backend": no engine here
    args, expected = BAD[case]
    args = args + ([] if case == "no backend" else ["--dry-run"])
    before = sorted(runs.home().rglob("*")) if runs.home().exists() else []
    assert main(sweep_cli(*args)) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "Traceback" not in err
    assert (sorted(runs.home().rglob("*")) if runs.home().exists() else []) == before


@pytest.mark.parametrize("backend", ["modal", "runpod"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry run", "launch"])
def test_a_refused_image_is_the_only_output_of_a_cloud_sweep(backend, dry_run, capsys, monkeypatch):
    monkeypatch.delenv("LORA_GYM_REGISTRY", raising=False)  # the default image is then a bare local tag
    args = sweep_cli("--grid", "train.seed=1,2", "--backend", backend, "--no-check", *(["--dry-run"] * dry_run))
    assert main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and "names no registry" in err, (out, err)


def test_bad_grid_files_are_one_error_line(tmp_path, capsys):
    cases = {"missing.toml": "not found", "bad.toml": "not valid TOML", "scalar.toml": "is not a list"}
    (tmp_path / "bad.toml").write_text("[grid\n")
    (tmp_path / "scalar.toml").write_text("[grid]\ntrain.seed = 3\n")
    for name, expected in cases.items():
        assert main(sweep_cli("--grid-file", str(tmp_path / name), "--dry-run")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err


# --- the plan of a sweep ----------------------------------------------------------------------------------

def test_each_run_is_an_ordinary_run_with_its_overrides_and_one_cache_pass():
    axes = grid.combine(["train.learning_rate=5e-5,1e-4", "train.network_dim=16,32"], None)
    sweep = prepare_sweep("wan21-t2v-1.3b", None, ("train.max_train_epochs=10",), DS, axes, sweep_id="s1")
    assert [t.run_id for t in sweep.trainings] == ["s1-01", "s1-02", "s1-03", "s1-04"]
    assert [c.run_id for c in sweep.caches] == ["s1-cache1"]
    for training in sweep.trainings:
        argv = next(s.argv for s in training.job.plan.steps if not s.markers)
        lr, dim = (o.split("=")[1] for o in training.grid)
        assert argv[argv.index("--learning_rate") + 1] == str(float(lr))
        assert argv[argv.index("--network_dim") + 1] == dim
        assert argv[argv.index("--max_train_epochs") + 1] == "10"
        assert training.job.plan.run_id == training.run_id and training.cache == "s1-cache1"


def test_a_grid_over_a_cache_setting_gets_one_cache_pass_per_value():
    axes = grid.combine(["dataset.videos.1.resolution=640x352,480x272", "train.learning_rate=5e-5,1e-4"], None)
    sweep = prepare_sweep("wan21-t2v-1.3b", None, (), DS, axes, sweep_id="s2")
    assert len(sweep.caches) == 2
    assert [t.cache for t in sweep.trainings] == ["s2-cache1", "s2-cache1", "s2-cache2", "s2-cache2"]


def test_expert_both_is_two_runs_per_combination_after_one_cache_pass_for_both():
    axes = grid.combine(["experts.low.learning_rate=5e-5,1e-4"], None)
    sweep = prepare_sweep("wan22-t2v-lightning", "both", (), DS, axes, sweep_id="s3")
    assert [(t.run_id, t.expert) for t in sweep.trainings] == [
        ("s3-01-high", "high"), ("s3-01-low", "low"), ("s3-02-high", "high"), ("s3-02-low", "low")]
    [cache] = sweep.caches
    assert cache.job.plan.expert == "both"
    # the cache pass for both experts leaves every marker each single-expert training waits for
    needed = {m for t in sweep.trainings for s in t.job.plan.steps for m in s.markers}
    assert needed == {m for s in cache.job.plan.steps for m in s.markers}


def test_dry_run_shows_the_runs_and_one_cache_pass(capsys):
    assert main(sweep_cli("--grid", "train.learning_rate=5e-5,8e-5,1e-4", "--grid", "train.network_dim=16,32",
                          "--dry-run")) == 0
    out = capsys.readouterr().out
    assert "6 runs of wan21-t2v-1.3b, 1 cache pass" in out
    assert out.count("(LORA_GYM_STAGE=train)") == 6 and out.count("(LORA_GYM_STAGE=cache)") == 1


def test_local_dry_run_prints_one_container_per_pass_and_run(capsys, tmp_path):
    assert main(sweep_cli("--grid", "train.learning_rate=5e-5,1e-4", "--backend", "local", "--output",
                          str(tmp_path / "runs"), "--gpu-ids", "0,1", "--dry-run")) == 0
    out = capsys.readouterr().out
    assert out.count("docker run") == 3 and out.count("-e LORA_GYM_STAGE=cache") == 1
    assert out.count("-e LORA_GYM_STAGE=train") == 2
    assert "device=0" in out and "device=1" in out  # one training per GPU
    assert not (tmp_path / "runs").exists()  # a dry run writes nothing


# --- a local sweep, end to end ----------------------------------------------------------------------------

class FakeEngine:
    """Runs a ContainerSpec as the real entrypoint in a process: the spec's LORA_GYM_* variables, with the
    mounted folders replaced by the Container helper's folders (checked against the spec's mounts)."""

    def __init__(self, box: Container, output: Path):
        self.box, self.output, self.started = box, output, []
        self.lock = threading.Lock()

    def __call__(self, spec) -> int:
        mounts = {m.target: m.source for m in spec.mounts}
        assert mounts["/dataset"] == str(self.box.dataset.resolve()) and mounts["/output"] == str(self.output)
        env = self.box.env(spec.env["LORA_GYM_PRESET"])
        env |= {k: v for k, v in spec.env.items() if not k.endswith("_DIR") and k != "LORA_GYM_PRESET"}
        env["LORA_GYM_OUTPUT_DIR"] = str(self.output)
        with self.lock:
            self.started.append((spec.env["LORA_GYM_RUN_ID"], spec.env.get("LORA_GYM_STAGE", "all"), spec.gpus))
        result = self.box.run(env)
        print(result.stdout[-2000:], result.stderr[-2000:])
        return result.returncode


@pytest.fixture
def engine(tmp_path, dataset, monkeypatch):
    box = Container(tmp_path, dataset)
    box.stock_weights("wan21-t2v-1.3b")
    fake = FakeEngine(box, (tmp_path / "runs").resolve())
    monkeypatch.setattr(local_sweep, "docker_execute", lambda sweep, options: fake)
    return fake


def local_sweep_cli(dataset, output, *extra):
    return ["sweep", "--preset", "wan21-t2v-1.3b", "--dataset", str(dataset), "--grid",
            "train.learning_rate=5e-5,1e-4", "--grid", "train.network_dim=16,32", "--backend", "local",
            "--output", str(output), *extra]


def test_local_sweep_caches_once_and_trains_every_combination(engine, dataset, tmp_path, capsys):
    assert main(local_sweep_cli(dataset, engine.output, "--set", "train.max_train_epochs=2")) == 0
    calls = engine.box.calls()
    scripts = [c["script"] for c in calls]
    assert scripts.count("wan_cache_latents") == 1 and scripts.count("wan_cache_text_encoder_outputs") == 1
    trainings = [c["argv"] for c in calls if c["script"] == "wan_train_network"]
    assert len(trainings) == 4
    pairs = {(a[a.index("--learning_rate") + 1], a[a.index("--network_dim") + 1]) for a in trainings}
    assert pairs == {("5e-05", "16"), ("5e-05", "32"), ("0.0001", "16"), ("0.0001", "32")}
    [record] = [r for r in runs.all_runs() if r.get("kind") == "sweep"]
    assert [s for _, s, _ in engine.started] == ["cache"] + ["train"] * 4
    for entry in record["runs"]:
        manifest = json.loads((engine.output / entry["run_id"] / "run.json").read_text())
        # The train stage is every step without cache markers: the training, then its samples (their DiT's
        # key check first).
        assert manifest["status"] == "succeeded"
        assert [s["name"] for s in manifest["steps"]] == ["train", "dit-keys", "samples-e000002"]
    capsys.readouterr()
    assert main(["status", record["run_id"]]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["run", "grid", "state", "epoch", "loss", "cost"]
    assert len(table) == 1 + 1 + 4 and all("succeeded" in row for row in table[1:])
    assert sum("2/2" in row for row in table) == 4  # every run reached its last epoch
    losses = [row.split()[-2] for row in table[2:]]  # from each run's progress.json: the fake's falling loss
    assert all(0 < float(loss) < 1 for loss in losses) and len(set(losses)) > 1, table


def test_local_sweep_with_two_gpu_ids_runs_one_training_per_gpu(engine, dataset):
    assert main(local_sweep_cli(dataset, engine.output, "--gpu-ids", "0,1", "--set", "train.max_train_epochs=1")) == 0
    gpus = [g for _, stage, g in engine.started if stage == "train"]
    assert sorted(gpus) == [("0",), ("0",), ("1",), ("1",)]


def test_an_unreachable_engine_is_one_line_and_writes_nothing(dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such.sock")
    assert main(local_sweep_cli(dataset, tmp_path / "runs")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot reach Docker or Podman")
    assert not (tmp_path / "runs").exists() and not [r for r in runs.all_runs() if r.get("kind") == "sweep"]


def test_a_failed_cache_pass_starts_no_training(engine, dataset, monkeypatch):
    real = engine.__class__.__call__
    monkeypatch.setattr(engine.__class__, "__call__",
                        lambda self, spec: 3 if spec.env["LORA_GYM_STAGE"] == "cache" else real(self, spec))
    assert main(local_sweep_cli(dataset, engine.output)) == 3
    assert not [c for c in engine.box.calls() if c["script"] == "wan_train_network"]
