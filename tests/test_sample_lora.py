"""Samples that apply the LoRA (issue 17): a DiT whose keys musubi's generator matches for every preset (the
dit-keys step and its bare-key copy), a sample step whose LoRA was not applied fails with that reason and shows no
video, and a Wan 2.2 `both` trained in two containers samples the pair with both LoRAs.

The generator double (tests/fakes/fake_musubi_tuner, _fake_merge.py) merges LoRA keys into the DiT file's keys as
musubi's generator does, prints its warning for keys that land nowhere and then renders the base model, and the
trainer double writes musubi's LoRA keys for the DiT it trained (_fake_lora.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_DATASET, FAKES
from fakes import tiny_wan
from safetensors.numpy import load_file, save_file
from test_entrypoint import Container
from test_golden import combinations

from launcher import report
from launcher.core.dataset import scan_dataset
from launcher.core.job import prepare
from launcher.core.plan import make_plan
from launcher.core.presets import load_preset
from lora_gym_entrypoint import ditkeys
from lora_gym_entrypoint import samples as run_samples

PREFIX = "model.diffusion_model."
SMALL = "train.max_train_epochs=4 train.save_every_n_epochs=2 samples.every=1"  # samples at epochs 2 and 4
WARNING = "not all LoRA keys are used"


def plan_of(name, expert=None, *overrides, run_id="r", pair=None):
    return make_plan(load_preset(name, overrides).preset, expert, scan_dataset(EXAMPLE_DATASET), run_id, pair=pair)


def arg(argv, flag):
    return argv[list(argv).index(flag) + 1] if flag in argv else None


def fake_musubi():
    """The musubi-tuner double's own modules (merge rule, trainer's LoRA), imported as its scripts import them."""
    sys.path.insert(0, str(FAKES / "fake_musubi_tuner" / "src"))
    try:
        from musubi_tuner import _fake_lora, _fake_merge
    finally:
        sys.path.pop(0)
    return _fake_lora, _fake_merge


# --- the plan ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, expert", [*combinations(), ("wan22-t2v-lightning", "both"),
                                          ("wan22-i2v-vanilla", "both")])
def test_every_dit_the_samples_load_has_its_key_check_between_training_and_samples(name, expert):
    plan = plan_of(name, expert)
    names = [s.name for s in plan.steps]
    checks = [s for s in plan.steps if s.name.startswith("dit-keys")]
    sampled = [s for s in plan.steps if s.name.startswith("samples-")]
    loaded = {arg(s.argv, flag) for s in sampled for flag in ("--dit", "--dit_high_noise")} - {None}
    assert {arg(c.argv, "--dit") for c in checks} == loaded and len(checks) == len(loaded)
    assert dict(plan.samples.dit_copies) == {arg(c.argv, "--dit"): arg(c.argv, "--output") for c in checks}
    last_training = max(i for i, n in enumerate(names) if n.startswith("train"))
    for check in checks:
        assert last_training < names.index(check.name) < names.index(sampled[0].name)
        assert check.name in plan.samples.steps  # a samples step: its failure never costs the LoRAs
        [marker] = check.markers
        assert Path(marker).parent == Path(arg(check.argv, "--output")).parent
        assert marker.startswith("/cache/dit-keys/")


def test_the_bare_key_copy_is_keyed_by_the_dit_alone():
    one, other = plan_of("wan21-t2v-1.3b"), plan_of("wan21-t2v-1.3b", None, "train.learning_rate=1e-4", run_id="x")
    assert one.samples.dit_copies == other.samples.dit_copies  # another run of the same DiT: the same copy
    moved = plan_of("wan21-t2v-1.3b", None, "model.dit=Comfy-Org/Wan_2.1_ComfyUI_repackaged:split_files/"
                    "diffusion_models/wan2.1_t2v_14B_bf16.safetensors")
    assert moved.samples.dit_copies[0][1] != one.samples.dit_copies[0][1]
    # the low expert's DiT, trained here or only sampled beside the high expert's LoRA: one copy
    low, high = (dict(plan_of("wan22-t2v-vanilla", e).samples.dit_copies) for e in ("low", "high"))
    assert low == high and len(low) == 2


def test_a_pair_plan_samples_with_the_other_experts_loras_from_its_folder():
    plan = plan_of("wan22-t2v-lightning", "high", pair="/output/r-low")
    first = next(s for s in plan.steps if s.name.startswith("samples-"))
    assert arg(first.argv, "--lora_weight") == "/output/r-low/wan22-t2v-lightning-low-000010.safetensors"
    assert arg(first.argv, "--lora_weight_high_noise") == "/output/r/wan22-t2v-lightning-high-000010.safetensors"
    assert plan.samples.pair == "/output/r-low" and len(plan.samples.pair_loras) == len(plan.samples.epochs)
    assert plan.samples.pair_loras[-1] == "/output/r-low/wan22-t2v-lightning-low.safetensors"
    assert "the run that finishes training last samples the pair" in plan.samples.note
    assert plan.outputs == ("/output/r/wan22-t2v-lightning-high.safetensors",)  # it trains only its own


@pytest.mark.parametrize("name, expert", [("wan21-t2v-1.3b", None), ("wan22-t2v-vanilla", "both")])
def test_a_pair_needs_one_wan22_expert(name, expert):
    from launcher.core.errors import UserError

    with pytest.raises(UserError, match="LORA_GYM_PAIR_DIR .* set LORA_GYM_EXPERT to high or low"):
        plan_of(name, expert, pair="/output/other")


# --- the key copy --------------------------------------------------------------------------------------

def test_a_prefixed_dit_is_copied_with_bare_keys_and_the_same_tensors(tmp_path, capsys):
    source, copy = tmp_path / "dit.safetensors", tmp_path / "out" / "dit.safetensors"
    tiny_wan.write_dit(source, prefix=PREFIX)
    assert ditkeys.main(["--dit", str(source), "--output", str(copy)]) == 0
    before, after = load_file(source), load_file(copy)
    assert {key.removeprefix(PREFIX) for key in before} == set(after) and not any(k.startswith(PREFIX) for k in after)
    assert all(np.array_equal(before[key], after[key.removeprefix(PREFIX)]) for key in before)
    assert all(before[key].dtype == after[key.removeprefix(PREFIX)].dtype for key in before)
    assert f"keys of {source} start with {PREFIX}" in capsys.readouterr().out
    assert not list(copy.parent.glob("*.partial"))


def test_a_bare_dit_is_left_as_it_is(tmp_path, capsys):
    source, copy = tmp_path / "dit.safetensors", tmp_path / "out" / "dit.safetensors"
    tiny_wan.write_dit(source)
    assert ditkeys.main(["--dit", str(source), "--output", str(copy)]) == 0
    assert not copy.exists() and "the samples load it as it is" in capsys.readouterr().out


def test_a_sharded_prefixed_dit_is_copied_shard_by_shard(tmp_path):
    whole = tmp_path / "whole.safetensors"
    tiny_wan.write_dit(whole, prefix=PREFIX)
    tensors = load_file(whole)
    keys = sorted(tensors)
    for n, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), 1):
        save_file({k: tensors[k] for k in part}, str(tmp_path / f"dit-{n:05d}-of-00002.safetensors"))
    out = tmp_path / "copy" / "dit-00001-of-00002.safetensors"
    assert ditkeys.bare_copy(tmp_path / "dit-00001-of-00002.safetensors", out) == len(keys)
    copied = {**load_file(out), **load_file(out.with_name("dit-00002-of-00002.safetensors"))}
    assert set(copied) == {k.removeprefix(PREFIX) for k in keys}


@pytest.mark.parametrize("content, message", [
    (b"\x00" * 64, "is not a safetensors file"),
    (None, "would name two tensors without the prefix"),
])
def test_a_dit_that_cannot_be_copied_is_one_error_line(tmp_path, capsys, content, message):
    source = tmp_path / "dit.safetensors"
    if content is None:
        save_file({f"{PREFIX}blocks.0.ffn.0.weight": np.zeros((2, 2), np.float16),
                   "blocks.0.ffn.0.weight": np.ones((2, 2), np.float16)}, str(source))
    else:
        source.write_bytes(content)
    assert ditkeys.main(["--dit", str(source), "--output", str(tmp_path / "out.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.safetensors").exists()


# --- the generator double keeps musubi's rule ----------------------------------------------------------

def test_the_generator_double_applies_a_lora_only_to_a_bare_dit(tmp_path, capsys):
    fake_lora, fake_merge = fake_musubi()
    bare, prefixed, lora = (tmp_path / f"{n}.safetensors" for n in ("bare", "prefixed", "lora"))
    tiny_wan.write_dit(bare)
    tiny_wan.write_dit(prefixed, prefix=PREFIX)
    args = {"--dit": str(prefixed), "--output_name": "x", "--learning_rate": "1e-4", "--max_train_epochs": "2",
            "--network_module": "networks.lora_wan", "--network_dim": "4", "--network_alpha": "4",
            "--mixed_precision": "bf16", "--seed": "42"}
    fake_lora.save(lora, args, 2, 6)  # trained on the prefixed file: musubi's bare module names all the same
    assert fake_merge.merge(str(bare), [str(lora)]) != fake_merge.merge(str(bare), [])
    assert WARNING not in capsys.readouterr().err
    assert fake_merge.merge(str(prefixed), [str(lora)]) == fake_merge.merge(str(prefixed), [])  # nothing landed
    warning = capsys.readouterr().err.strip()
    assert warning.startswith(f"WARNING:musubi_tuner.utils.lora_utils:Warning: {WARNING}: lora_unet_blocks_0_")
    assert warning.count("lora_down.weight") == len(fake_lora.linear_modules(str(prefixed)))  # every module


# --- in the (fake) container ---------------------------------------------------------------------------

@pytest.fixture
def box(tmp_path, dataset) -> Container:
    return Container(tmp_path, dataset)


def stock(box: Container, preset: str, expert: str | None = None, prefix: str = "") -> None:
    """Weights for the plan, every DiT a tiny Wan DiT with the real key names (under `prefix`)."""
    box.stock_weights(preset, expert)
    for weight in prepare(preset, expert, (), box.dataset, run_id="x", paths=box.paths).plan.weights:
        if weight.role.startswith("dit"):
            tiny_wan.write_dit(Path(weight.container_path), i2v="i2v" in preset, prefix=prefix)


def generations(box: Container) -> list[list[str]]:
    return [c["argv"] for c in box.calls() if c["script"] == "wan_generate_video"]


def test_the_13b_case_samples_apply_the_lora_through_the_bare_key_copy(box):
    stock(box, "wan21-t2v-1.3b", prefix=PREFIX)  # the 1.3B file's keys, as musubi's loader says it has them
    result = box.run(box.env("wan21-t2v-1.3b", LORA_GYM_SET=SMALL))
    assert result.returncode == 0, result.stderr + result.stdout
    [run_dir] = box.runs()
    record = json.loads((run_dir / "run.json").read_text())["samples"]
    assert record["status"] == "succeeded" and len(record["videos"]) == 4 and len(record["sheets"]) == 2
    assert WARNING not in result.stdout and "start with model.diffusion_model." in result.stdout
    assert all(arg(argv, "--dit").startswith(f"{box.cache}/dit-keys/") for argv in generations(box))
    by_epoch = {v["epoch"]: v["sha256"] for v in record["videos"] if v["prompt"] == 1}
    assert by_epoch[2] != by_epoch[4]  # each epoch's LoRA shows


def test_without_the_copy_the_13b_samples_fail_and_nothing_presents_the_base_model(box):
    stock(box, "wan21-t2v-1.3b", prefix=PREFIX)
    plan = prepare("wan21-t2v-1.3b", None, tuple(SMALL.split()), box.dataset, run_id="x", paths=box.paths).plan
    [check] = [s for s in plan.steps if s.name == "dit-keys"]
    Path(check.markers[0]).parent.mkdir(parents=True)  # as if the check had found bare keys: no copy to load
    Path(check.markers[0]).write_text(json.dumps({"files": []}))
    result = box.run(box.env("wan21-t2v-1.3b", LORA_GYM_SET=SMALL))
    assert result.returncode == 0, result.stderr + result.stdout  # the LoRAs are done: the run succeeds
    [run_dir] = box.runs()
    manifest = json.loads((run_dir / "run.json").read_text())
    record = manifest["samples"]
    assert manifest["status"] == "succeeded"
    assert record["status"] == "failed" and record["failed_step"] == "samples-e000002"
    assert record["reason"].startswith("the LoRA was not applied") and WARNING in record["reason"]
    assert record["videos"] == [] and record["sheets"] == []
    assert not list(run_dir.rglob("*.mp4")) and not list(run_dir.rglob("*.png"))  # nothing left to mistake
    steps = {s["name"]: s for s in manifest["steps"]}
    assert steps["samples-e000002"]["status"] == "failed" and steps["samples-e000004"]["status"] == "skipped"
    assert "[lora-gym] samples-e000002 failed: the LoRA was not applied" in result.stdout
    assert arg(generations(box)[0], "--dit") == plan.samples.dit_copies[0][0]  # the prefixed file itself
    page = report.render(run_dir)
    assert "the LoRA was not applied" in page and "<video" not in page and "contact sheet" not in page


def test_a_bare_dit_is_sampled_as_it_is(box):
    stock(box, "wan21-t2v-14b")
    result = box.run(box.env("wan21-t2v-14b", LORA_GYM_SET=SMALL))
    assert result.returncode == 0, result.stderr + result.stdout
    record = json.loads((box.runs()[0] / "run.json").read_text())["samples"]
    assert record["status"] == "succeeded" and "the samples load it as it is" in result.stdout
    assert all(arg(argv, "--dit").startswith(str(box.weights)) for argv in generations(box))
    assert not [p for p in (box.cache / "dit-keys").rglob("*.safetensors")]


def test_videos_equal_to_another_epochs_are_not_the_loras():
    earlier = [{"epoch": 2, "prompt": 1, "path": "samples/e000002/prompt-1.mp4", "sha256": "a"}]
    same = [{"epoch": 4, "prompt": 1, "path": "samples/e000004/prompt-1.mp4", "sha256": "a"}]
    other = [{"epoch": 4, "prompt": 1, "path": "samples/e000004/prompt-1.mp4", "sha256": "b"}]
    watch = run_samples.LoraWatch(open("/dev/null", "w"))  # noqa: SIM115 - a sink the watch writes through
    assert run_samples.not_applied(watch, earlier, other) is None
    why, gone = run_samples.not_applied(watch, earlier, same)
    assert "byte for byte the one of epoch 2" in why and gone == same + earlier
    watch.write("[samples-e000004] WARNING:musubi_tuner.utils.lora_utils:Warning: not all LoRA keys are used: a, b\n")
    why, gone = run_samples.not_applied(watch, [], other)
    assert "matched 2 LoRA keys to no weight" in why and gone == other


# --- Wan 2.2 `both` in two containers (RunPod's two pods, Modal's stages) -----------------------------

def pair_env(box: Container, expert: str, **extra: str) -> dict:
    other = {"high": "low", "low": "high"}[expert]
    return box.env("wan22-t2v-vanilla", expert, LORA_GYM_RUN_ID=f"r-{expert}", LORA_GYM_SET=SMALL,
                   LORA_GYM_PAIR_DIR=str(box.output / f"r-{other}"), **extra)


def record_of(box: Container, run_id: str) -> dict:
    return json.loads((box.output / run_id / "run.json").read_text())


def test_the_pod_that_finishes_training_last_samples_the_pair(box):
    stock(box, "wan22-t2v-vanilla", "both")
    first = box.run(pair_env(box, "high"))  # the low pod has not trained yet
    assert first.returncode == 0, first.stderr + first.stdout
    assert record_of(box, "r-high")["samples"]["status"] == "deferred" and generations(box) == []
    assert f"the run in {box.output / 'r-low'} samples the pair" in record_of(box, "r-high")["samples"]["reason"]
    second = box.run(pair_env(box, "low"))
    assert second.returncode == 0, second.stderr + second.stdout
    record = record_of(box, "r-low")["samples"]
    assert record["status"] == "succeeded" and len(record["videos"]) == 4
    for argv, epoch in zip(generations(box), ("-000002", ""), strict=True):
        assert arg(argv, "--lora_weight") == str(box.output / "r-low" / f"wan22-t2v-vanilla-low{epoch}.safetensors")
        assert arg(argv, "--lora_weight_high_noise") == str(
            box.output / "r-high" / f"wan22-t2v-vanilla-high{epoch}.safetensors")
    claim = json.loads((box.output / "r-high" / run_samples.PAIR_CLAIM).read_text())
    assert claim["run_dir"] == str(box.output / "r-low")


def test_when_both_have_trained_one_claim_decides_who_samples(tmp_path):
    runs = {name: tmp_path / name for name in ("r-high", "r-low")}
    for folder in runs.values():
        folder.mkdir()
        save_file({"x": np.zeros(1, np.float32)}, str(folder / "lora.safetensors"))

    def turn(me, other):
        plan = type("S", (), {"pair": str(runs[other]), "pair_loras": (str(runs[other] / "lora.safetensors"),)})
        return run_samples.pair_turn(plan, str(runs[me]), "all")

    assert turn("r-low", "r-high") is None  # it claimed the pair
    assert turn("r-high", "r-low") == ("deferred", f"the run in {runs['r-low']} samples the pair")
    assert turn("r-low", "r-high") is None  # a restart of the claimant keeps it


def test_train_stages_defer_and_the_samples_stage_samples_the_pair(box):
    stock(box, "wan22-t2v-vanilla", "both")
    cached = box.run(box.env("wan22-t2v-vanilla", "both", LORA_GYM_STAGE="cache", LORA_GYM_RUN_ID="cache",
                             LORA_GYM_SET=SMALL))
    assert cached.returncode == 0, cached.stderr + cached.stdout
    early = box.run(pair_env(box, "low", LORA_GYM_STAGE="samples"))  # nothing trained yet
    assert early.returncode == 2 and early.stderr.startswith("error: LORA_GYM_STAGE=samples needs the trained LoRA")
    for expert in ("high", "low"):
        trained = box.run(pair_env(box, expert, LORA_GYM_STAGE="train"))
        assert trained.returncode == 0, trained.stderr + trained.stdout
        assert record_of(box, f"r-{expert}")["samples"]["status"] == "deferred"
    assert generations(box) == []
    sampled = box.run(pair_env(box, "low", LORA_GYM_STAGE="samples"))
    assert sampled.returncode == 0, sampled.stderr + sampled.stdout
    run = record_of(box, "r-low")
    assert run["status"] == "succeeded" and run["samples"]["status"] == "succeeded" and run["stage"] == "samples"
    assert run["restarts"][-1]["status_before"] == "succeeded"  # the same folder, reopened for its samples
    assert [c["script"] for c in box.calls()].count("wan_train_network") == 2  # no training ran again
    assert len(generations(box)) == 2 and all(arg(a, "--lora_weight_high_noise").startswith(str(box.output / "r-high"))
                                              for a in generations(box))


def test_the_samples_stage_without_the_other_experts_loras_fails_its_samples_only(box):
    stock(box, "wan22-t2v-vanilla", "both")
    assert box.run(box.env("wan22-t2v-vanilla", "both", LORA_GYM_STAGE="cache", LORA_GYM_SET=SMALL)).returncode == 0
    assert box.run(pair_env(box, "low", LORA_GYM_STAGE="train")).returncode == 0  # the high expert never trains
    result = box.run(pair_env(box, "low", LORA_GYM_STAGE="samples"))
    assert result.returncode == 0, result.stderr + result.stdout
    record = record_of(box, "r-low")["samples"]
    assert record["status"] == "failed" and "wan22-t2v-vanilla-high-000002.safetensors is not in" in record["reason"]
    assert generations(box) == []
