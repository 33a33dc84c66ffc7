"""Rules every plan must satisfy, checked on the finished argv (musubi-tuner v0.3.4 facts).

These are the mistakes that silently ruin runs in copy-pasted scripts: a missing `--i2v` when caching
I2V latents, `--mixed_precision` that does not match the DiT, a Wan 2.2 expert trained over all
timesteps, a polynomial floor musubi ignores. A violation is a bug in the plan, never user input.
"""

from __future__ import annotations

from launcher import contract
from launcher.core.schema import Preset

ATTENTION_FLAGS = ("--sdpa", "--flash_attn", "--sage_attn", "--xformers", "--flash3")
# musubi sizes these schedules from --max_train_steps/--max_train_epochs (constant ones need no length).
DECAYING_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial")


class PlanError(RuntimeError):
    """The plan broke one of the rules below: a bug in LoRA Gym, reported with every problem."""


def split_script(argv: tuple[str, ...]) -> tuple[list[str], str | None, list[str]]:
    """(launcher part, musubi script name, script arguments); script None for non-musubi steps."""
    for index, arg in enumerate(argv):
        if "/musubi_tuner/" in arg and arg.endswith(".py"):
            return list(argv[:index]), arg.rsplit("/", 1)[-1][:-3], list(argv[index + 1:])
    return list(argv), None, []


def _value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def _latent_rules(preset: Preset, args: list[str]) -> list[str]:
    info, problems = contract.task_info(preset.model.task), []
    if info["needs_i2v_latent_cache"] != ("--i2v" in args):
        problems.append(f"cache-latents: --i2v must be given exactly for I2V tasks ({preset.model.task})")
    if info["needs_clip_features"] != ("--clip" in args):
        problems.append(f"cache-latents: --clip must be given exactly for Wan 2.1 I2V ({preset.model.task})")
    return problems


def _train_rules(preset: Preset, launch: list[str], args: list[str]) -> list[str]:
    problems, dtype = [], preset.model.dtype
    if _value(launch, "--mixed_precision") != dtype or _value(args, "--mixed_precision") != dtype:
        problems.append(f"train: --mixed_precision {dtype} must be on both accelerate and the script")
    gpus = preset.resources.gpus
    if _value(launch, "--num_processes") != str(gpus) or ("--multi_gpu" in launch) != (gpus > 1):
        problems.append(f"train: accelerate needs --num_processes {gpus}" + (" and --multi_gpu" if gpus > 1 else ""))
    attention = [flag for flag in ATTENTION_FLAGS if flag in args]
    if len(attention) != 1 or "--sage_attn" in attention:
        problems.append(f"train: exactly one attention flag other than --sage_attn is needed, got {attention}")
    for flag in ("--network_module", "--network_dim", "--network_alpha", "--learning_rate", "--output_dir",
                 "--output_name", "--dit", "--dataset_config", "--task"):
        if _value(args, flag) is None:
            problems.append(f"train: {flag} must be set explicitly")
    if "--lr_scheduler_min_lr_ratio" in args:
        problems.append("train: --lr_scheduler_min_lr_ratio is ignored by musubi; use lr_end")
    if _value(args, "--lr_scheduler") == "polynomial" and not (_value(args, "--lr_scheduler_args") or "").startswith(
            "lr_end="):
        problems.append("train: the polynomial floor must be --lr_scheduler_args lr_end=<value>")
    return problems + _memory_rules(preset, args) + _expert_rules(preset, args)


def _memory_rules(preset: Preset, args: list[str]) -> list[str]:
    problems, most = [], contract.task_info(preset.model.task)["max_blocks_to_swap"]
    if int(_value(args, "--blocks_to_swap") or 0) > most:  # musubi asserts it, after minutes of loading
        problems.append(f"train: --blocks_to_swap is at most {most} for {preset.model.task}")
    if "--gradient_checkpointing_cpu_offload" in args and "--gradient_checkpointing" not in args:
        problems.append("train: --gradient_checkpointing_cpu_offload needs --gradient_checkpointing")
    return problems


def _expert_rules(preset: Preset, args: list[str]) -> list[str]:
    if preset.family != "wan22":
        return []
    problems = []
    if "--timestep_boundary" in args or "--dit_high_noise" in args:
        problems.append("train: single-expert training must not pass a boundary or a second DiT")
    for flag in ("--min_timestep", "--max_timestep"):
        if not (_value(args, flag) or "").isdigit():
            problems.append(f"train: Wan 2.2 experts need an integer {flag}")
    if "--preserve_distribution_shape" not in args or _value(args, "--timestep_sampling") != "shift":
        problems.append("train: Wan 2.2 experts need --timestep_sampling shift --preserve_distribution_shape")
    return problems


def _sample_rules(preset: Preset, args: list[str], outputs) -> list[str]:
    """wan_generate_video checks musubi makes only after loading models: catch them at --dry-run instead."""
    info, problems = contract.task_info(preset.model.task), []
    for flag in ("--task", "--dit", "--vae", "--t5", "--from_file", "--save_path"):
        if _value(args, flag) is None:
            problems.append(f"samples: {flag} must be set explicitly")
    if info["needs_clip_features"] != ("--clip" in args):
        problems.append(f"samples: --clip must be given exactly for Wan 2.1 I2V ({preset.model.task})")
    if (info["wan_version"] == "2.2") != ("--dit_high_noise" in args):
        problems.append("samples: Wan 2.2 samples through both experts (--dit_high_noise), Wan 2.1 has one DiT")
    if "--fp8_scaled" in args and "--fp8" not in args:
        problems.append("samples: --fp8_scaled goes with --fp8")
    loras = [_value(args, f) for f in ("--lora_weight", "--lora_weight_high_noise") if f in args]
    if not loras:
        problems.append("samples: no LoRA to sample")
    run_dirs = {o.rsplit("/", 1)[0] for o in outputs}
    problems += [f"samples: {lora} is not a checkpoint of this run" for lora in loras
                 if lora is None or lora.rsplit("/", 1)[0] not in run_dirs]
    return problems


def plan_problems(plan, preset: Preset) -> list[str]:
    problems = []
    for step in plan.steps:
        launch, script, args = split_script(step.argv)
        if script is None:
            continue
        problems += [f"{step.name}: {p}" for p in contract.check_args(script, args)]
        if script == "wan_cache_latents":
            problems += _latent_rules(preset, args)
        if script == "wan_train_network":
            problems += _train_rules(preset, launch, args)
        if script == "wan_generate_video":  # the LoRAs of this run, and of its pair's (LORA_GYM_PAIR_DIR)
            problems += _sample_rules(preset, args, (*plan.outputs, *plan.samples.pair_loras))
    return problems


def verify_plan(plan, preset: Preset) -> None:
    problems = plan_problems(plan, preset)
    if problems:
        raise PlanError("plan breaks the musubi-tuner contract (a LoRA Gym bug, please report it): "
                        + "; ".join(problems))


def resume_problems(argv) -> list[str]:
    """Rules for a resumed train argv (entrypoint resume.py), on top of the contract."""
    _, script, args = split_script(tuple(argv))
    if script != "wan_train_network":
        return ["a resumed step must run wan_train_network"]
    problems = contract.check_args(script, args)
    if not _value(args, "--resume"):
        problems.append("train: a resumed run needs --resume <state folder>")
    schedule_args = args[args.index("--lr_scheduler_args") + 1:] if "--lr_scheduler_args" in args else []
    if (_value(args, "--lr_scheduler") or "constant") in DECAYING_SCHEDULES and not (
            _value(args, "--lr_scheduler_type") and any(a.startswith("num_training_steps=") for a in schedule_args)):
        # Without them musubi sizes the schedule from the remaining epochs while --resume keeps the elapsed steps.
        problems.append("train: a resumed decaying schedule needs --lr_scheduler_type and num_training_steps=<total>")
    return problems
