"""Plans as text for people and as JSON for programs."""

from __future__ import annotations

import json
import shlex

from launcher.core.job import Job


def argv_lines(argv) -> list[str]:
    """A command as copy-pasteable shell, one `--flag value` per line."""
    lines: list[str] = []
    for arg in argv:
        if arg.startswith("--") or not lines:
            lines.append(shlex.quote(arg))
        else:
            lines[-1] += " " + shlex.quote(arg)
    # Keep the launcher part (`accelerate launch ...` or `python script.py`) on the first line.
    while len(lines) > 1 and not lines[0].endswith(".py") and "-m lora_gym_entrypoint" not in lines[0] \
            and "/musubi_tuner/" not in lines[0]:
        lines[0] += " " + lines.pop(1)
    return [lines[0]] + ["    " + line for line in lines[1:]]


def plan_data(job: Job) -> dict:
    data = job.plan.to_json()
    data["preset_origin"] = job.loaded.origin
    data["preset_sha256"] = job.loaded.content_hash
    data["overrides"] = list(job.loaded.overrides)
    return data


def as_json(job: Job) -> str:
    return json.dumps(plan_data(job), indent=2)


def samples_lines(samples) -> list[str]:
    if samples is None:
        return ["Samples: off (samples.enabled=false)"]
    epochs = ", ".join(str(e) for e in samples.epochs) or "none"
    out = [f"Samples ({samples.folder}): epochs {epochs}; {samples.note}"]
    if samples.dit_copies:  # see launcher/core/samples.py dit_keys
        out.append("  a sampled DiT whose keys carry model.diffusion_model. is loaded from its bare-key copy (dit-keys "
                   "steps), so that musubi's generator applies the LoRA")
    return out + [f"  seed {p.seed:<6} {p.frames} frames  {p.text}" + (f"  [start frame {p.image}]" if p.image
                                                                        else "") for p in samples.prompts]


def as_text(job: Job) -> str:
    plan, counts = job.plan, job.layout.counts
    expert = f", expert {plan.expert}" if plan.expert else ""
    out = [f"Plan for {plan.preset}{expert} (preset {job.loaded.origin}, sha256 {job.loaded.content_hash[:12]})",
           f"  run folder : {plan.run_dir}",
           f"  GPU        : {plan.resources.gpu_count} x {plan.resources.gpu_memory_gb} GB class, host RAM "
           f"{plan.resources.host_memory_gb} GB, time limit {plan.resources.time_limit_hours:g} h",
           *(f"  memory     : {'expert ' + c.expert + ', ' if c.expert else ''}{c.reason}" for c in plan.memory),
           f"  dataset    : {counts['image']} images, {counts['video']} videos",
           f"  outputs    : {', '.join(plan.outputs)}", "", "Weights:"]
    out += [f"  {w.role:<16} {w.repo} : {w.path}" for w in plan.weights]
    out += ["", f"Dataset config ({plan.dataset_config_path}):"]
    out += ["  " + line for line in plan.dataset_config.splitlines()]
    out += ["", *samples_lines(plan.samples), "", "Steps:"]
    for number, step in enumerate(plan.steps, 1):
        skip = "  (skipped when its cache exists)" if step.markers else ""
        out.append(f"  {number}. {step.name}{skip}")
        lines = argv_lines(step.argv)
        continued = [line + " \\" for line in lines[:-1]] + lines[-1:]
        out += ["     " + line for line in continued]
    return "\n".join(out)
