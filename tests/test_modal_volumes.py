"""Modal's volume visibility under the real orchestrators (`both`, `sweep`) and run_stage: each container sees a
volume as it was when the container started plus its own writes, other containers' commits only after a reload
(tests/fakes/fake_modal_volume.py, modelled on Modal's documents and SDK). The stages run the real entrypoint with
the musubi-tuner test double, so a training that cannot see the cache fails the way it would on Modal."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import modal
import pytest
from conftest import EXAMPLE_DATASET, FAKES
from fakes.fake_modal_volume import FakeContainer, FakeFunction, FakeModalVolume
from test_entrypoint import Container
from test_modal_backend import IMAGE, _offline  # noqa: F401  (autouse: no Modal client can be made)

from launcher.backends import LaunchOptions, modal_app, modal_backend
from launcher.core.job import prepare
from launcher.sweep import grid, modal_sweep
from launcher.sweep.prepare import prepare_sweep

PRESET = "wan22-t2v-vanilla"  # no Lightning merge: the cache stage is the two cache steps
OFF = ("samples.enabled=false",)  # the samples would only add minutes of fake video rendering


@pytest.fixture
def image_env(tmp_path, monkeypatch) -> Container:
    """What the image gives every container: the entrypoint on PATH, musubi-tuner (the test double), weights."""
    box = Container(tmp_path / "image", EXAMPLE_DATASET)
    box.stock_weights(PRESET, "both")
    for name, value in {"LORA_GYM_WEIGHTS_DIR": str(box.weights), "LORA_GYM_MUSUBI_DIR": box.paths.musubi,
                        "LORA_GYM_PYTHON": sys.executable, "FAKE_MUSUBI_LOG": str(box.log),
                        "PATH": f"{FAKES / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                                f"{os.environ['PATH']}"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(modal.FunctionCall, "gather", lambda *calls: [call.get() for call in calls])
    return box


def stage(container: FakeContainer, env: dict, dataset: dict, preset_toml, volumes) -> dict:
    """A stage function's body inside `container`: its paths are the container's (mounts, local /tmp)."""
    env = {key: container.path(value, (modal_app.WORK_DIR,)) for key, value in env.items()}
    blobs = container.path(f"{modal_app.DATASETS_MOUNT}/{modal_app.BLOBS}")
    return modal_app.run_stage(env, dataset, preset_toml, container.handles(volumes), blobs=blobs,
                               out=container.log)


class Platform:
    """The run's volumes, the launcher's dataset upload into them, and one FakeFunction per function of the spec
    (the stages mount every volume, the orchestrator none), as modal_app.build registers them."""

    def __init__(self, root: Path, spec: modal_backend.ModalSpec, job):
        self.spec = spec
        self.volumes = {mount: FakeModalVolume(root, name) for mount, name in spec.volumes.items()}
        files = modal_backend.dataset_files(EXAMPLE_DATASET, job)
        modal_app.upload_dataset(self.volumes[modal_app.DATASETS_MOUNT], EXAMPLE_DATASET, files)
        self.functions = {c.function: FakeFunction(root, c.function, self.volumes, stage) for c in spec.calls}
        orchestrate = modal_app.ORCHESTRATORS[spec.orchestrator]
        self.functions[spec.orchestrator] = FakeFunction(root, spec.orchestrator, {},
                                                         lambda container, *args: orchestrate(*args))

    def run(self):
        return modal_app.spawn(self.spec, self.functions, self.volumes).get()

    def committed(self, mount: str) -> Path:
        return self.volumes[mount].committed

    def logs(self) -> str:
        return "".join(c.log.getvalue() for f in self.functions.values() for c in f.containers)


def both_platform(tmp_path) -> Platform:
    job = prepare(PRESET, "both", OFF, EXAMPLE_DATASET, run_id="r1")
    options = LaunchOptions(dataset=str(EXAMPLE_DATASET), image=IMAGE, run_id="r1")
    return Platform(tmp_path / "modal", modal_backend.modal_spec(job, options), job)


def sweep_platform(tmp_path) -> Platform:
    sweep = prepare_sweep(PRESET, "low", OFF, str(EXAMPLE_DATASET),
                          grid.combine(("experts.low.learning_rate=5e-5,1e-4",), None), sweep_id="sw")
    spec = modal_sweep.spec(sweep, LaunchOptions(dataset=str(EXAMPLE_DATASET), image=IMAGE))
    return Platform(tmp_path / "modal", spec, sweep.trainings[0].job)


def markers(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and "datasets" in p.parts)


def test_both_trains_both_experts_on_the_committed_cache(tmp_path, image_env):
    platform = both_platform(tmp_path)
    results = platform.run()
    assert [r["stage"] for r in results] == ["cache", "high", "low"], platform.logs()
    scripts = [c["script"] for c in image_env.calls()]
    assert scripts.count("wan_cache_latents") == 1 and scripts.count("wan_train_network") == 2  # cached once
    outputs = platform.committed(modal_app.OUTPUTS_MOUNT) / "r1"
    assert {p.name for p in outputs.iterdir()} >= {"cache", "high", "low"}
    assert all((outputs / expert / "run.json").is_file() for expert in ("high", "low"))  # `launcher pull` finds them
    # every container started after the commits it needed: one each, none reused
    assert all(len(f.containers) == 1 for f in platform.functions.values())


def test_a_two_run_sweep_trains_both_runs_on_the_committed_cache(tmp_path, image_env):
    platform = sweep_platform(tmp_path)
    results = platform.run()
    assert [r["stage"] for r in results] == ["cache", "low", "low"], platform.logs()
    outputs = platform.committed(modal_app.OUTPUTS_MOUNT)
    assert all((outputs / run / "run.json").is_file() for run in ("sw-01", "sw-02"))
    assert len(platform.functions["train"].containers) == 2  # spawned at once: two containers


@pytest.mark.parametrize("make", [both_platform, sweep_platform])
def test_without_the_commit_the_trainings_cannot_see_the_cache(tmp_path, image_env, monkeypatch, make):
    monkeypatch.setattr(modal_app, "commit", lambda volumes: None)
    platform = make(tmp_path)
    with pytest.raises(modal_app.StageFailed) as failed:
        platform.run()
    assert failed.value.exit_code == 2  # the entrypoint's bad-input exit: the train stage found no cache
    assert "LORA_GYM_STAGE=train needs the output of cache-latents, cache-text-encoder" in platform.logs()
    [cacher] = platform.functions["cache"].containers
    assert markers(cacher.views[modal_app.CACHE_MOUNT].path)  # the cache pass did write it, in its own view
    assert not markers(platform.committed(modal_app.CACHE_MOUNT))  # but nothing reached the volume
    assert "wan_train_network" not in [c["script"] for c in image_env.calls()]


@pytest.mark.parametrize("reloads", [True, False])
def test_a_warm_container_sees_a_later_commit_only_through_its_reload(tmp_path, image_env, monkeypatch, reloads):
    """A container that started before the cache pass committed (a warm one, reused for the next call) keeps
    its old view unless the stage reloads first."""
    platform = both_platform(tmp_path)
    cache_call, high_call = platform.spec.calls[:2]
    warm = FakeContainer(tmp_path / "modal", "train_high", platform.volumes)  # started before the cache existed
    args = (platform.spec.dataset, None, platform.volumes)
    platform.functions["cache"].spawn(cache_call.env, *args).get()
    assert markers(platform.committed(modal_app.CACHE_MOUNT))
    if not reloads:
        monkeypatch.setattr(modal_app, "reload", lambda volumes: None)
        with pytest.raises(modal_app.StageFailed):
            stage(warm, high_call.env, *args)
        assert "needs the output of cache-latents" in warm.log.getvalue()
    else:
        assert stage(warm, high_call.env, *args)["stage"] == "high"


def test_the_volume_double_shows_writes_after_commit_and_reload_only(tmp_path):
    volume = FakeModalVolume(tmp_path, "v")
    one, two = (FakeContainer(tmp_path, "f", {"/v": volume}) for _ in range(2))
    (one.views["/v"].path / "a").write_text("from one")
    assert not (two.views["/v"].path / "a").exists()
    one.views["/v"].commit()
    assert not (two.views["/v"].path / "a").exists()  # committed, but two has not reloaded
    assert (FakeContainer(tmp_path, "f", {"/v": volume}).views["/v"].path / "a").read_text() == "from one"
    (two.views["/v"].path / "b").write_text("from two")
    two.views["/v"].reload()  # Modal: uncommitted changes "may implicitly be committed when reloading"
    assert (two.views["/v"].path / "a").read_text() == "from one" and (volume.committed / "b").is_file()
    (one.views["/v"].path / "a").write_text("one again")
    one.views["/v"].commit()  # a commit writes only what its container changed: two's "b" stays
    assert (volume.committed / "a").read_text() == "one again" and (volume.committed / "b").is_file()


def test_both_samples_the_pair_once_both_trainings_have_committed(tmp_path, image_env):
    """Neither training container can see the other's LoRAs (each mounted the outputs before the other committed),
    so both defer their samples; the samples stage, started after both commits, pairs the two LoRAs."""
    from fakes import tiny_wan

    paired = ("train.max_train_epochs=2", "train.save_every_n_epochs=1")  # one sampled epoch, the last
    job = prepare(PRESET, "both", paired, EXAMPLE_DATASET, run_id="r1")
    for weight in job.plan.weights:  # DiTs with real key names: the doubles merge LoRA keys into them
        if weight.role.startswith("dit"):
            tiny_wan.write_dit(image_env.weights / weight.repo / weight.path)
    options = LaunchOptions(dataset=str(EXAMPLE_DATASET), image=IMAGE, run_id="r1")
    platform = Platform(tmp_path / "modal", modal_backend.modal_spec(job, options), job)
    assert [r["stage"] for r in platform.run()] == ["cache", "high", "low", "samples"], platform.logs()
    outputs = platform.committed(modal_app.OUTPUTS_MOUNT) / "r1"
    high, low = (json.loads((outputs / expert / "run.json").read_text()) for expert in ("high", "low"))
    assert high["samples"]["status"] == "deferred" and low["samples"]["status"] == "succeeded", platform.logs()
    assert [v["path"] for v in low["samples"]["videos"]] == ["samples/e000002/prompt-1.mp4",
                                                            "samples/e000002/prompt-2.mp4"]
    assert (outputs / "low" / "samples" / "e000002" / "prompt-1.mp4").is_file()  # committed by the samples stage
    [generate] = [c["argv"] for c in image_env.calls() if c["script"] == "wan_generate_video"]
    lora_high = generate[generate.index("--lora_weight_high_noise") + 1]
    assert lora_high.endswith("/output/r1/high/wan22-t2v-vanilla-high.safetensors")
    assert [c["script"] for c in image_env.calls()].count("wan_train_network") == 2  # the samples trained nothing
