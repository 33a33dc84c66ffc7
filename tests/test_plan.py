"""The plan's rules, one by one, and proof that the rule checker catches each violation."""

from __future__ import annotations

from dataclasses import replace

import pytest
from conftest import EXAMPLE_DATASET

from launcher.core.checks import plan_problems
from launcher.core.dataset import scan_dataset
from launcher.core.errors import UserError
from launcher.core.plan import ContainerPaths, make_plan
from launcher.core.presets import load_preset

LAYOUT = scan_dataset(EXAMPLE_DATASET)


def plan_for(name, expert=None, overrides=(), **kwargs):
    return make_plan(load_preset(name, overrides).preset, expert, LAYOUT, "run", **kwargs)


def step(plan, name):
    return next(s for s in plan.steps if s.name == name)


def value(argv, flag):
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("name, expert, i2v, clip", [
    ("wan22-i2v-lightning", "high", True, False), ("wan21-i2v-480p", None, True, True),
    ("wan22-t2v-vanilla", "low", False, False), ("wan21-t2v-1.3b", None, False, False)])
def test_latent_cache_flags_follow_the_task(name, expert, i2v, clip):
    argv = step(plan_for(name, expert), "cache-latents").argv
    assert ("--i2v" in argv, "--clip" in argv) == (i2v, clip)


@pytest.mark.parametrize("name, expert, dtype", [("wan22-t2v-lightning", "low", "fp16"),
                                                 ("wan21-t2v-14b", None, "bf16")])
def test_mixed_precision_on_accelerate_and_script(name, expert, dtype):
    argv = list(step(plan_for(name, expert), f"train{'-' + expert if expert else ''}").argv)
    script_at = next(i for i, a in enumerate(argv) if a.endswith("wan_train_network.py"))
    assert value(argv[:script_at], "--mixed_precision") == dtype == value(argv[script_at:], "--mixed_precision")


@pytest.mark.parametrize("name, expert, low, high", [
    ("wan22-t2v-lightning", "high", "875", "1000"), ("wan22-t2v-lightning", "low", "0", "875"),
    ("wan22-i2v-vanilla", "high", "900", "1000"), ("wan22-i2v-vanilla", "low", "0", "900")])
def test_wan22_expert_timesteps_are_integers_with_preserved_shape(name, expert, low, high):
    argv = step(plan_for(name, expert), f"train-{expert}").argv
    assert (value(argv, "--min_timestep"), value(argv, "--max_timestep")) == (low, high)
    assert "--preserve_distribution_shape" in argv and value(argv, "--timestep_sampling") == "shift"
    assert "--timestep_boundary" not in argv and "--dit_high_noise" not in argv


def test_polynomial_floor_is_lr_end():
    argv = step(plan_for("wan22-t2v-vanilla", "low"), "train-low").argv
    assert value(argv, "--lr_scheduler_args") == "lr_end=8e-07"
    assert "--lr_scheduler_min_lr_ratio" not in argv


def test_overrides_reach_the_argv():
    argv = step(plan_for("wan21-t2v-14b", overrides=["train.learning_rate=3e-5", "train.blocks_to_swap=10",
                                                     "train.attention=xformers"]), "train").argv
    assert value(argv, "--learning_rate") == "3e-05" and value(argv, "--blocks_to_swap") == "10"
    assert "--xformers" in argv and "--sdpa" not in argv


def test_tensorboard_only_where_installed():
    with_tb = step(plan_for("wan21-t2v-14b"), "train").argv
    without = step(plan_for("wan21-t2v-14b", paths=ContainerPaths(tensorboard=False)), "train").argv
    assert value(with_tb, "--log_with") == "tensorboard" and "--log_with" not in without


def test_both_experts_cache_once_then_train_twice():
    plan = plan_for("wan22-t2v-lightning", "both")
    assert [s.name for s in plan.steps][:6] == ["cache-latents", "cache-text-encoder", "merge-lightning-high",
                                                "train-high", "merge-lightning-low", "train-low"]
    assert [s.name for s in plan.steps[6:8]] == ["dit-keys-high", "dit-keys-low"]  # tests/test_sample_lora.py
    assert all(s.name.startswith("samples-") for s in plan.steps[8:])  # tests/test_samples.py
    assert [o.rsplit("/", 1)[1] for o in plan.outputs] == ["wan22-t2v-lightning-high.safetensors",
                                                          "wan22-t2v-lightning-low.safetensors"]


def test_cache_dirs_are_shared_exactly_when_cache_inputs_match():
    def dirs(name, expert=None, overrides=()):
        return step(plan_for(name, expert, overrides), "cache-latents").markers
    assert dirs("wan22-t2v-lightning", "high") == dirs("wan22-t2v-vanilla", "low") == dirs("wan21-t2v-14b")
    assert dirs("wan22-i2v-lightning", "high") != dirs("wan22-t2v-lightning", "high")  # --i2v latents
    assert dirs("wan21-i2v-720p") != dirs("wan21-i2v-480p")  # different CLIP and areas
    assert dirs("wan21-t2v-14b") != dirs("wan21-t2v-14b", overrides=["cache.fp8_t5=false"])
    changed = dirs("wan21-t2v-14b", overrides=["dataset.videos.1.frame_sample=3"])
    assert changed[:2] == dirs("wan21-t2v-14b")[:2] and changed[2] != dirs("wan21-t2v-14b")[2]


def test_merged_dit_is_keyed_by_lock_hashes_and_strength():
    lock = {}
    def merged(strength=1.0, sha="a" * 64):
        lock.update({f"{w.repo}:{w.path}": {"sha256": sha} for w in plan_for("wan22-t2v-lightning", "high").weights})
        p = plan_for("wan22-t2v-lightning", "high", [f"experts.high.lightning.strength={strength}"], lock=lock)
        return value(step(p, "merge-lightning-high").argv, "--output")
    assert merged() == merged() != merged(strength=0.5)
    assert merged(sha="b" * 64) != merged(sha="a" * 64)


def test_plan_is_pure_and_deterministic():
    assert plan_for("wan22-i2v-lightning", "both") == plan_for("wan22-i2v-lightning", "both")


@pytest.mark.parametrize("name, expert, message", [
    ("wan21-t2v-14b", "high", "--expert is only for Wan 2.2"),
    ("wan22-t2v-vanilla", None, "add --expert high, low or both")])
def test_expert_rules(name, expert, message):
    with pytest.raises(UserError, match=message):
        plan_for(name, expert)


def _broken(plan, name, transform):
    steps = tuple(replace(s, argv=tuple(transform(list(s.argv)))) if s.name == name else s for s in plan.steps)
    return replace(plan, steps=steps)


def _drop(flag, with_value=False):
    def transform(argv):
        i = argv.index(flag)
        return argv[:i] + argv[i + 1 + with_value:]
    return transform


@pytest.mark.parametrize("name, expert, step_name, transform, expected", [
    ("wan22-i2v-vanilla", "high", "cache-latents", _drop("--i2v"), "--i2v"),
    ("wan21-i2v-720p", None, "cache-latents", _drop("--clip", True), "--clip"),
    ("wan21-t2v-14b", None, "train", _drop("--mixed_precision", True), "--mixed_precision"),
    ("wan22-t2v-vanilla", "low", "train-low", _drop("--preserve_distribution_shape"), "preserve"),
    ("wan22-t2v-vanilla", "low", "train-low", lambda a: a + ["--timestep_boundary", "875"], "boundary"),
    ("wan21-t2v-14b", None, "train", lambda a: a + ["--sage_attn"], "attention"),
    ("wan21-t2v-14b", None, "train", _drop("--output_name", True), "--output_name"),
    ("wan21-t2v-14b", None, "train", lambda a: a + ["--lr_scheduler_min_lr_ratio", "0.01"], "lr_end"),
    ("wan21-t2v-14b", None, "train", lambda a: a + ["--no_such_flag"], "unknown argument"),
    ("wan21-t2v-14b", None, "train", lambda a: a + ["--max_timestep", "0.9"], "expects int"),
    ("wan21-t2v-1.3b", None, "train", lambda a: a + ["--blocks_to_swap", "30"], "at most 29"),
    ("wan21-t2v-14b", None, "train", lambda a: [x for x in a if x != "--gradient_checkpointing"]
     + ["--gradient_checkpointing_cpu_offload"], "needs --gradient_checkpointing"),
])
def test_rule_checker_catches_each_violation(name, expert, step_name, transform, expected):
    preset = load_preset(name).preset
    plan = make_plan(preset, expert, LAYOUT, "run")
    problems = plan_problems(_broken(plan, step_name, transform), preset)
    assert any(expected in p for p in problems), problems


def test_save_state_keeps_two_states_for_resuming():
    argv = step(plan_for("wan21-t2v-1.3b", overrides=("train.save_state=true",)), "train").argv
    assert "--save_state" in argv and value(argv, "--save_last_n_epochs_state") == "2"
    assert "--save_state" not in step(plan_for("wan21-t2v-1.3b"), "train").argv  # off by default


def test_resume_rules_catch_a_schedule_sized_from_the_remaining_steps():
    from launcher.core.checks import resume_problems

    argv = step(plan_for("wan21-t2v-1.3b", overrides=("train.save_state=true",)), "train").argv
    assert resume_problems(argv) == [
        "train: a resumed run needs --resume <state folder>",
        "train: a resumed decaying schedule needs --lr_scheduler_type and num_training_steps=<total>"]
    constant = step(plan_for("wan21-t2v-1.3b", overrides=("train.lr_scheduler=constant",)), "train").argv
    assert resume_problems((*constant, "--resume", "/s")) == []
