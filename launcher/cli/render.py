"""Plans as text for people and as JSON for programs.

The text is a summary a person reads in one screen: each distinct command once (a run of steps that differ
only in a few values, such as the samples of each epoch, is one command and a list), the dataset TOML as one
line per dataset, and the command to type next. The full argv of every step, and the TOML, are in
`--format json`, which the golden files pin.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib

import click

from launcher.core.job import Job

WIDTH = 120  # columns of a wrapped command line, its indentation included


def quoted(arg: str, run_dir: str | None = None) -> str:
    """`arg` for a POSIX shell; a path in the run folder as `$RUN/...` (the plan's header sets RUN)."""
    text = shlex.quote(arg)
    if run_dir and text == arg and (arg == run_dir or arg.startswith(run_dir + "/")):
        return "$RUN" + arg[len(run_dir):]
    return text


def argv_lines(argv, run_dir: str | None = None, width: int = WIDTH - 5) -> list[str]:
    """A command as copy-pasteable shell: the program, then `--flag value` groups packed into lines of at most
    `width` characters, continuation lines indented by 4 (a longer group gets a line of its own)."""
    groups: list[str] = []
    for arg in argv:
        if arg.startswith("--") or not groups:
            groups.append(quoted(arg, run_dir))
        else:
            groups[-1] += " " + quoted(arg, run_dir)
    # Keep the launcher part (`accelerate launch ...` or `python script.py`) in the first group.
    while len(groups) > 1 and not groups[0].endswith(".py") and "-m lora_gym_entrypoint" not in groups[0] \
            and "/musubi_tuner/" not in groups[0]:
        groups[0] += " " + groups.pop(1)
    return packed(groups, width, "    ")


def packed(groups: list[str], width: int, indent: str) -> list[str]:
    """`groups` joined by spaces into lines of at most `width` characters, never splitting a group; every line
    after the first starts with `indent`."""
    lines = [groups[0]]
    for group in groups[1:]:
        if len(lines[-1]) + 1 + len(group) <= width:
            lines[-1] += " " + group
        else:
            lines.append(indent + group)
    return lines


def plan_data(job: Job) -> dict:
    data = job.plan.to_json()
    data["preset_origin"] = job.loaded.origin
    data["preset_sha256"] = job.loaded.content_hash
    data["overrides"] = list(job.loaded.overrides)
    return data


def as_json(job: Job) -> str:
    return json.dumps(plan_data(job), indent=2)


def samples_lines(samples, run_dir: str | None = None) -> list[str]:
    if samples is None:
        return ["Samples: off (samples.enabled=false)"]
    epochs = ", ".join(str(e) for e in samples.epochs) or "none"
    out = [f"Samples ({quoted(samples.folder, run_dir)}): epochs {epochs}; {samples.note}"]
    if samples.dit_copies:  # see launcher/core/samples.py dit_keys
        out.append("  a sampled DiT whose keys carry model.diffusion_model. is loaded from its bare-key copy (dit-keys "
                   "steps), so that musubi's generator applies the LoRA")
    return out + [f"  seed {p.seed:<6} {p.frames} frames  {p.text}" + (f"  [start frame {p.image}]" if p.image
                                                                        else "") for p in samples.prompts]


def dataset_lines(files: str, path: str, config_text: str) -> list[str]:
    """musubi's dataset TOML, one line per [[datasets]] entry (the TOML itself is in --format json)."""
    config = tomllib.loads(config_text)
    general = config.get("general", {})
    bucket = "buckets on" if general.get("enable_bucket") else "no buckets"
    out = [f"Dataset: {files}; musubi's config ({path}): batch size {general.get('batch_size', 1)}, {bucket}"
           + (", no upscale" if general.get("bucket_no_upscale") else "")]
    for entry in config.get("datasets", []):
        kind, folder = ("images", entry["image_directory"]) if "image_directory" in entry else \
            ("videos", entry.get("video_directory", "?"))
        parts = ["x".join(str(side) for side in entry.get("resolution", []))]
        if "target_frames" in entry:
            how = ", ".join(f"{key} {entry[key]}" for key in ("frame_sample", "frame_stride", "max_frames")
                            if key in entry)
            frames = ",".join(str(f) for f in entry["target_frames"])
            parts.append(f"{frames} frames ({entry.get('frame_extraction', 'head')}{', ' + how if how else ''})")
        parts.append(f"repeats {entry.get('num_repeats', 1)}")
        out.append(f"  {kind:<7} {folder}  {', '.join(parts)}")
    return out


def step_groups(steps) -> list[list[int]]:
    """Indexes of the steps, consecutive steps running the same command with other values joined in one group."""
    groups: list[list[int]] = []
    for index, step in enumerate(steps):
        if groups and _same_shape(steps[groups[-1][0]], step):
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _same_shape(a, b) -> bool:
    """The same program and flags in the same places (only option values differ), both cached or neither."""
    return a.argv != b.argv and len(a.argv) == len(b.argv) and a.argv[0] == b.argv[0] and \
        bool(a.markers) == bool(b.markers) and all(x == y for x, y in zip(a.argv, b.argv, strict=True)
                                                   if x.startswith("--") or y.startswith("--"))


def _changed_flags(shown, argvs) -> list[str]:
    return [flag for flag, _ in _changed(shown, argvs)]


def _changed(shown, argvs) -> list[tuple[str, str]]:
    """(flag, value in the last of `argvs`) wherever an option's value differs from the command `shown`."""
    return [(shown[i - 1], argvs[-1][i]) for i in range(1, len(shown))
            if shown[i - 1].startswith("--") and any(argv[i] != shown[i] for argv in argvs)]


def _changes(shown, argv, run_dir: str) -> list[str]:
    """How `argv` differs from the command `shown`: its new values as `--flag value`, a path only by its flag
    (the other expert's weights and caches, say)."""
    values = _changed(shown, [argv])
    plain = [f"{flag} {quoted(value, run_dir)}" for flag, value in values if "/" not in value]
    paths = [flag for flag, value in values if "/" in value]
    return plain + ([("and other " if plain else "other ") + ", ".join(paths)] if paths else [])


def _title(steps, numbers: str) -> str:
    epochs = [re.fullmatch(r"samples-e0*(\d+)", s.name) for s in steps]
    if len(steps) > 1 and all(epochs):
        return f"{numbers}. samples at epochs {', '.join(m.group(1) for m in epochs)}"
    return f"{numbers}. {', '.join(s.name for s in steps)}"


def steps_lines(steps, run_dir: str) -> list[str]:
    """Each distinct command once; a group of steps, or a step shaped like an earlier one, says what changes."""
    out, shown = [], []
    for group in step_groups(steps):
        members = [steps[i] for i in group]
        numbers = str(group[0] + 1) + (f"-{group[-1] + 1}" if len(group) > 1 else "")
        notes = ["skipped when its cache exists"] * bool(members[0].markers)
        earlier = next((n for n, step in shown if _same_shape(step, members[0])), None)
        if earlier is not None and len(members) == 1:
            changes = _changes(steps[earlier - 1].argv, members[0].argv, run_dir)
            out += packed([f"  {_title(members, numbers)}: step {earlier}'s command with", *changes], WIDTH,
                          "     ")
            continue
        if len(members) > 1:
            changed = ", ".join(_changed_flags(members[0].argv, [s.argv for s in members[1:]]))
            notes.append(f"shown: the first; the others change {changed}")
        out.append(f"  {_title(members, numbers)}" + (f"  ({'; '.join(notes)})" if notes else ""))
        lines = argv_lines(members[0].argv, run_dir)
        out += ["     " + line for line in [line + " \\" for line in lines[:-1]] + lines[-1:]]
        shown.append((group[0] + 1, members[0]))
    return out


def as_text(job: Job, estimate: str | None = None) -> str:
    plan, counts = job.plan, job.layout.counts
    expert = f", expert {plan.expert}" if plan.expert else ""
    out = [f"Plan for {plan.preset}{expert} (preset {job.loaded.origin}, sha256 {job.loaded.content_hash[:12]})",
           f"  run folder : RUN={quoted(plan.run_dir)}  (the commands below say $RUN)",
           f"  GPU        : {plan.resources.gpu_count} x {plan.resources.gpu_memory_gb} GB class, host RAM "
           f"{plan.resources.host_memory_gb} GB, time limit {plan.resources.time_limit_hours:g} h",
           *(f"  memory     : {'expert ' + c.expert + ', ' if c.expert else ''}{c.reason}" for c in plan.memory),
           f"  outputs    : {', '.join(quoted(o, plan.run_dir) for o in plan.outputs)}",
           f"  weights    : {', '.join(w.role for w in plan.weights)} (from the Hub, at /weights/<repo>/<file>)",
           *([f"  estimate   : {estimate.removeprefix('estimate: ')}"] if estimate else [])]
    files = f"{counts['image']} images, {counts['video']} videos"
    out += ["", *dataset_lines(files, quoted(plan.dataset_config_path, plan.run_dir), plan.dataset_config)]
    out += ["", *samples_lines(plan.samples, plan.run_dir), "", "Steps (every argv in full: --format json):",
            *steps_lines(plan.steps, plan.run_dir)]
    return "\n".join(out)


def next_command(ctx: click.Context, drop: tuple[str, ...] = ("dry_run", "fmt"), **add: str) -> str:
    """The command line the user typed (the options they gave, as parsed), less `drop`, plus `add`: what to
    type next, quoted for a POSIX shell."""
    from click.core import ParameterSource

    argv = ctx.command_path.split()
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in drop or param.name in add or \
                ctx.get_parameter_source(param.name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            continue
        if isinstance(param, click.Argument):
            argv += [str(v) for v in (value if param.multiple else [value])]
        elif getattr(param, "is_flag", False):
            argv += [param.opts[0]] * bool(value)
        else:
            argv += [item for v in (value if param.multiple else [value]) for item in (param.opts[0], str(v))]
    for name, value in add.items():
        argv += [next(p.opts[0] for p in ctx.command.params if p.name == name), value]
    return shlex.join(argv)


def plan_text(job: Job, ctx: click.Context) -> str:
    """`run --dry-run` without a backend: the plan, its estimate, and the command that runs it."""
    from launcher import estimate

    return as_text(job, estimate.run_line(None, None, job, None)) + "\n" + \
        next_step(ctx, "modal, runpod or skypilot", backend="local")


def next_step(ctx: click.Context, others: str = "", **add: str) -> str:
    """The dry run's last lines: the command that does it for real (`others`: the other backends to name)."""
    note = f"\n  (or --backend {others}; keep --dry-run to see what it starts and costs)" if others else ""
    return f"\nNext: {next_command(ctx, **add)}{note}"
