"""The musubi-tuner contract checker mimics argparse: unknown flags, types, choices, arity, required."""

from __future__ import annotations

import pytest

from launcher import contract


def test_contract_is_the_pinned_release():
    assert contract.musubi_commit() == "30c658c4f4b0bf05038b3346eff9670259b10fc7"
    assert contract.load()["version"] == "0.3.4"
    assert set(contract.scripts()) == {"wan_cache_latents", "wan_cache_text_encoder_outputs", "wan_train_network",
                                       "wan_generate_video"}


@pytest.mark.parametrize("args, problem", [
    (["--prompt", "p"], "required argument --save_path missing"),
    (["--save_path", "o", "--video_size", "480"], "needs 2 value(s), got 1"),
    (["--save_path", "o", "--attn_mode", "sage"], "expected one of flash"),
    (["--save_path", "o", "--infer_steps", "4.5"], "expects int"),
    (["--save_path", "o", "--fp8", "1"], "takes no value"),
    (["--save_path", "o", "--lora_weight", "a", "b", "--lora_weight_high_noise", "c"], None),
])
def test_generate_script_is_in_the_contract(args, problem):
    problems = contract.check_args("wan_generate_video", args)
    assert any(problem in p for p in problems) if problem else problems == []


def test_valid_arguments_pass():
    assert contract.check_args("wan_cache_text_encoder_outputs",
                               ["--dataset_config", "d.toml", "--t5", "t5.pth", "--batch_size", "16", "--fp8_t5"]) == []


@pytest.mark.parametrize("args, problem", [
    (["--dataset_config", "d", "--t5", "t", "--batch_size", "x"], "--batch_size expects int"),
    (["--dataset_config", "d", "--t5", "t", "--fp8_t5", "yes"], "takes no value"),
    (["--dataset_config", "d", "--t5", "t", "--i2v"], "unknown argument '--i2v'"),
    (["--dataset_config", "d"], "required argument --t5 missing"),
    (["--dataset_config", "d", "--t5"], "needs 1 value(s), got 0"),
    (["--dataset_config", "d", "--t5", "a", "--t5", "b"], "given twice"),
])
def test_text_encoder_script_problems(args, problem):
    assert any(problem in p for p in contract.check_args("wan_cache_text_encoder_outputs", args))


@pytest.mark.parametrize("args, problem", [
    (["--mixed_precision", "fp32"], "expected one of no, fp16, bf16"),
    (["--task", "t2v-5B"], "expected one of"),
    (["--learning_rate", "fast"], "expects float"),
    (["--lr_scheduler_args", "lr_end=1e-6", "power=2"], None),  # nargs='*' takes any number
    (["--optimizer_args"], None),
])
def test_train_script_types_and_choices(args, problem):
    problems = contract.check_args("wan_train_network", args)
    assert (problems == []) if problem is None else any(problem in p for p in problems)


def test_task_facts():
    assert contract.task_info("i2v-14B")["needs_clip_features"] is True
    assert contract.task_info("i2v-A14B")["needs_clip_features"] is False
    assert contract.task_info("t2v-1.3B")["max_blocks_to_swap"] == 29
