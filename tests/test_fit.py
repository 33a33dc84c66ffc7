"""Fits your GPU: the memory model's arithmetic, the fit's choices (cheapest first, smallest swap, explicit
settings win), the one-line error when nothing fits, and the CLI around them."""

from __future__ import annotations

import re

import pytest
from conftest import EXAMPLE_DATASET

from launcher import contract
from launcher.cli.main import main
from launcher.core import fit, memory
from launcher.core.checks import plan_problems
from launcher.core.dataset import scan_dataset
from launcher.core.errors import UserError
from launcher.core.memory import Settings, Shape
from launcher.core.plan import make_plan
from launcher.core.presets import load_preset, preset_names

LAYOUT = scan_dataset(EXAMPLE_DATASET)
TIERS = (24, 32, 48, 80)


def plan_for(name, gb, overrides=(), expert=None):
    preset = load_preset(name, [f"resources.gpu_memory_gb={gb}", *overrides]).preset
    if preset.experts and expert is None:
        expert = "both"
    return preset, make_plan(preset, expert, LAYOUT, "run")


def train_argv(plan):
    return [s.argv for s in plan.steps if s.name.startswith("train")]


def flag_value(argv, flag):
    return int(argv[list(argv).index(flag) + 1]) if flag in argv else 0


# --- the model ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task, low, high", [("t2v-14B", 13.9e9, 14.6e9), ("t2v-1.3B", 1.3e9, 1.45e9),
                                             ("t2v-A14B", 13.9e9, 14.6e9)])
def test_parameter_count_matches_the_published_model_size(task, low, high):
    shape = Shape.of(task)
    total = shape.resident_params() + shape.layers * (shape.block_linear_params() + shape.block_other_params())
    assert low < total < high


def test_wan21_i2v_has_the_image_cross_attention_on_top():
    assert Shape.of("i2v-14B").block_linear_params() - Shape.of("t2v-14B").block_linear_params() == 2 * 5120 ** 2


def test_lora_params_grow_with_rank():
    shape = Shape.of("t2v-14B")
    assert shape.lora_params(42) == 42 * shape.lora_params(1)
    # rank 1 of every Linear in a block: 8 square projections (2 x 5120 each) and the FFN's two (5120 + 13824).
    assert shape.lora_params(1) == 40 * (8 * 2 * 5120 + 2 * (5120 + 13824))


def test_each_saving_saves_and_tokens_cost():
    shape, rank, tokens = Shape.of("t2v-A14B"), 8, 20_000
    gpu = {name: memory.estimate(shape, s, rank, tokens).gpu_gb for name, s in {
        "bf16": Settings(False), "fp8": Settings(True), "swap": Settings(True, 20),
        "offload": Settings(True, 20, True)}.items()}
    assert gpu["bf16"] > gpu["fp8"] > gpu["swap"] > gpu["offload"]
    assert memory.estimate(shape, Settings(True), rank, 2 * tokens).gpu_gb > gpu["fp8"]
    # fp8 halves the block weights: 40 blocks of ~351M parameters, about 13 GiB with fragmentation.
    assert 12 < gpu["bf16"] - gpu["fp8"] < 16


def test_block_swap_and_offload_move_memory_to_the_host():
    shape = Shape.of("t2v-14B")
    none, swap, offload = (memory.estimate(shape, s, 16, 20_000).host_gb
                           for s in (Settings(True), Settings(True, 10), Settings(True, 10, True)))
    assert none == memory.HOST_BASE_GB < swap < offload
    assert memory.host_request_gb(34.9) == 40 and memory.host_request_gb(16) == 16


# --- the fit --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("gb", TIERS)
def test_every_preset_plans_for_every_tier_or_says_why_in_one_line(name, gb):
    try:
        preset, plan = plan_for(name, gb)
    except UserError as exc:
        assert len(exc.problems) == 1 and "--gpu-memory" in exc.problems[0] and "shrink" in exc.problems[0]
        return
    assert plan_problems(plan, preset) == []  # every argv contract-checked
    for choice, argv in zip(plan.memory, train_argv(plan), strict=True):
        assert choice.estimated_gpu_gb <= gb * fit.USABLE
        assert flag_value(argv, "--blocks_to_swap") == choice.blocks_to_swap
        assert choice.blocks_to_swap <= contract.task_info(preset.model.task)["max_blocks_to_swap"]
        assert ("--gradient_checkpointing_cpu_offload" in argv) == choice.gradient_checkpointing_cpu_offload
        assert choice.reason.startswith(f"{gb} GB: ")
    assert plan.resources.host_memory_gb >= max(c.estimated_host_gb for c in plan.memory)


@pytest.mark.parametrize("name", ["wan21-t2v-14b", "wan22-t2v-lightning", "wan21-i2v-480p"])
def test_the_swap_is_the_smallest_that_fits(name):
    for gb in (24, 32, 40):
        preset, plan = plan_for(name, gb)
        for choice in plan.memory:
            if choice.blocks_to_swap == 0:
                continue
            req = fit.Request.of(preset, getattr(preset.experts, choice.expert).network_dim if choice.expert
                                 else preset.train.network_dim)
            tokens = max(load.tokens for load in fit.loads(preset, ["image", "video"]))
            one_less = Settings(choice.fp8_base, choice.blocks_to_swap - 1, choice.gradient_checkpointing_cpu_offload)
            assert memory.estimate(req.shape, one_less, req.rank, tokens).gpu_gb > gb * fit.USABLE


def test_more_memory_never_costs_more():
    # Cost order: activation offload is dearer than any block swap, more blocks dearer than fewer.
    costs = [(c.gradient_checkpointing_cpu_offload, c.blocks_to_swap)
             for c in (plan_for("wan21-t2v-14b", gb)[1].memory[0] for gb in (16, 24, 32, 40, 48, 80))]
    assert costs == sorted(costs, reverse=True) and costs[0] > (False, 0) == costs[-1]


def test_14b_at_24_gb_swaps_and_at_80_gb_does_not():
    assert plan_for("wan21-t2v-14b", 24)[1].memory[0].blocks_to_swap > 0
    assert plan_for("wan21-t2v-14b", 80)[1].memory[0].blocks_to_swap == 0


def test_fp8_comes_before_block_swap_when_the_preset_leaves_it_open():
    big = ["dataset.videos.0.resolution=1280x720", "dataset.videos.0.target_frames=81"]
    roomy = plan_for("wan21-t2v-1.3b", 24)[1].memory[0]
    tight = plan_for("wan21-t2v-1.3b", 16, big)[1].memory[0]
    assert not roomy.fp8_base and roomy.blocks_to_swap == 0
    assert tight.fp8_base


def test_an_explicit_blocks_to_swap_wins_and_the_reason_says_so():
    preset, plan = plan_for("wan21-t2v-14b", 80, ["train.blocks_to_swap=7"])
    assert flag_value(train_argv(plan)[0], "--blocks_to_swap") == 7
    assert "blocks_to_swap 7 (set by you)" in plan.memory[0].reason


def test_an_explicit_setting_too_big_plans_and_warns():
    _, plan = plan_for("wan21-t2v-14b", 16, ["train.blocks_to_swap=0"])
    assert flag_value(train_argv(plan)[0], "--blocks_to_swap") == 0
    assert "expect out-of-memory" in plan.memory[0].reason


def test_explicit_fp8_off_is_kept_and_swaps_instead():
    _, plan = plan_for("wan21-t2v-14b", 32, ["model.fp8_base=false"])
    argv = train_argv(plan)[0]
    assert "--fp8_base" not in argv and flag_value(argv, "--blocks_to_swap") > 0


def test_the_no_fit_error_names_settings_that_then_fit():
    with pytest.raises(UserError) as caught:
        plan_for("wan22-t2v-lightning", 16)
    (message,) = caught.value.problems
    assert "dataset.videos.0" in message and "--gpu-memory 24" in message
    # The first suggestion for each entry, applied, gives a plan that fits; so does each second one.
    sets = re.findall(r"--set (dataset\.videos\.(\d)\.\w+=\w+)", message)
    for pick in (0, 1):
        chosen = {entry: [s for s, e in sets if e == entry][pick] for _, entry in sets}
        _, plan = plan_for("wan22-t2v-lightning", 16, list(chosen.values()))
        assert all(c.estimated_gpu_gb <= 16 * fit.USABLE for c in plan.memory)


def test_a_gpu_too_small_for_the_weights_says_so():
    with pytest.raises(UserError) as caught:
        plan_for("wan21-t2v-14b", 24, ["train.network_dim=2048"])  # 10 bytes per LoRA parameter: ~95 GB
    assert "before any data" in caught.value.problems[0] and "--gpu-memory 141" in caught.value.problems[0]


def test_the_oom_hint_names_the_next_step():
    choice = plan_for("wan21-t2v-14b", 48)[1].memory[0]
    assert "--set train.blocks_to_swap=10" in choice.oom_hint and "--gpu-memory 80" in choice.oom_hint
    maxed = plan_for("wan21-t2v-14b", 16, ["train.blocks_to_swap=39",
                                           "train.gradient_checkpointing_cpu_offload=true"])[1].memory[0]
    assert "shrinking dataset.videos" in maxed.oom_hint


# --- the CLI --------------------------------------------------------------------------------------------

def test_dry_run_prints_what_it_chose(capsys):
    assert main(["run", "--preset", "wan21-t2v-14b", "--dataset", str(EXAMPLE_DATASET), "--gpu-memory", "24",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory     : 24 GB: fp8 base, blocks_to_swap" in out and "--blocks_to_swap" in out
    assert "host RAM 40 GB" in out


@pytest.mark.parametrize("argv, words", [
    (["--gpu-memory", "7"], ["--gpu-memory", "8<=x<=1024"]),
    (["--gpu-memory", "8"], ["does not fit 8 GB", "dataset.videos.0", "--gpu-memory 24"]),
])
def test_bad_gpu_memory_is_one_error_line(capsys, argv, words):
    code = main(["run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", str(EXAMPLE_DATASET),
                 "--dry-run", *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert all(word in err for word in words), err


def test_dataset_check_reports_the_fit_on_real_buckets(capsys):
    pytest.importorskip("av")
    assert main(["dataset", "check", str(EXAMPLE_DATASET), "--preset", "wan21-t2v-14b", "--gpu-memory", "32"]) == 0
    out = capsys.readouterr().out
    assert "GPU memory       32 GB: fp8 base, blocks_to_swap" in out
    assert main(["dataset", "check", str(EXAMPLE_DATASET), "--preset", "wan22-t2v-lightning",
                 "--gpu-memory", "12"]) == 2
    assert "does not fit 12 GB" in capsys.readouterr().out


def test_presets_show_names_the_keys_left_to_the_fit(capsys):
    assert main(["presets", "show", "wan21-t2v-14b", "--set", "train.blocks_to_swap=3"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("# chosen to fit") and "train.gradient_checkpointing_cpu_offload" in last
    assert "train.blocks_to_swap" not in last and "model.fp8_base" not in last  # both explicit here


def test_without_checkpointing_the_error_says_to_turn_it_back_on():
    with pytest.raises(UserError) as caught:
        plan_for("wan21-t2v-14b", 24, ["train.gradient_checkpointing=false"])
    assert "--set train.gradient_checkpointing=true" in caught.value.problems[0]
    _, plan = plan_for("wan21-t2v-14b", 24)  # and with it, 24 GB fits
    assert plan.memory[0].estimated_gpu_gb <= 24


def test_block_swap_needs_no_checkpointing_and_the_warning_names_the_fixes():
    _, plan = plan_for("wan21-t2v-14b", 24, ["model.fp8_base=false", "train.gradient_checkpointing=false"])
    argv, choice = train_argv(plan)[0], plan.memory[0]
    assert flag_value(argv, "--blocks_to_swap") == 39 and "--gradient_checkpointing_cpu_offload" not in argv
    assert "--set train.gradient_checkpointing=true" in choice.reason
    assert "--set model.fp8_base=none" in choice.reason
