"""`launcher run`: plan a training run; `--dry-run` prints it, `--backend` runs it."""

from __future__ import annotations

import json

import click

from launcher.backends import backend_names
from launcher.cli.backend_options import gpu_ids_option, refuse_misplaced, renamed_gpus_option
from launcher.cli.options import (
    EXPERT_HELP,
    Finite,
    gpu_memory_option,
    gpus_per_run_option,
    set_option,
    with_gpu_memory,
    with_gpus_per_run,
)
from launcher.cli.project import project_defaults, say_notes


@click.command(epilog="""\b
Examples:
  launcher init && launcher run --preset wan22-t2v-lightning
  launcher run --preset wan22-t2v-lightning --expert high --dataset ./my-dataset --dry-run
  launcher run --preset wan21-t2v-1.3b --dataset ./my-dataset --set train.max_train_epochs=20 --dry-run
  launcher run --preset wan21-t2v-14b --dataset ./my-dataset --gpu-memory 24 --dry-run
  launcher run --preset wan21-t2v-14b --dataset ./my-dataset --gpus-per-run 2 --dry-run
  launcher run --preset ./my-preset.toml --expert both --dataset ./my-dataset --dry-run --format json
  launcher run --preset wan21-t2v-1.3b --dataset ./my-dataset --output ./runs --backend local
  launcher run --preset wan21-t2v-1.3b --dataset ./my-dataset --samples prompts.txt --set samples.every=1 --dry-run
  launcher run --from ./runs/wan21-t2v-1.3b-20261124-101500 --dry-run""")
@click.option("--preset", help="A preset name (see `launcher presets list`) or a .toml path.")
@click.option("--expert", type=click.Choice(["high", "low", "both"]), help=EXPERT_HELP)
@click.option("--dataset", "dataset_dir", type=click.Path(),
              help="Folder of images/videos with a .txt caption beside each (or images/ and videos/) "
                   "[default: the project file's dataset, else ./dataset when it exists].")
@set_option
@gpu_memory_option
@click.option("--samples", "samples_file", type=click.Path(dir_okay=False),
              help="Extra sample prompts, one per line: `text [--f FRAMES] [--d SEED] [--i IMAGE]` (IMAGE inside "
                   "the dataset folder; I2V needs one).")
@gpus_per_run_option
@click.option("--backend", type=click.Choice(backend_names()),
              help="Where to run: local = this machine's Docker or Podman. With --dry-run: show how. "
                   "[default: the project file's backend, else local when the preset's image is here].")
@click.option("--output", type=click.Path(file_okay=False),
              help="local: folder for the run folders (LoRAs, run.json); created if missing.")
@click.option("--image", help="Any backend: image tag or digest to run instead of lora-gym-<family>:<version>.")
@gpu_ids_option
@renamed_gpus_option
@click.option("--cache-volume", help="local/modal: named volume for caches [default: lora-gym-cache-<family>].")
@click.option("--gpu", "gpu_type", help="modal/runpod/skypilot: the platform's GPU type [default: from the preset's "
                                        "GPU class].")
@click.option("--follow", is_flag=True, help="modal/runpod/skypilot: stream the logs to the end instead of detaching.")
@click.option("--max-hours", type=Finite(0, 720, "hours"),
              help="modal/runpod/skypilot: stop the run after this long [default: the preset's time limit]; a value "
                   "above the preset's limit raises it (the launcher says so).")
@click.option("--max-cost", type=Finite(0, 100_000, "usd"),
              help="modal/runpod: USD; refuse to start if the estimate is higher, stop when it is reached.")
@click.option("--volume", help="runpod: network volume id to use (default: create one in the datacenter); "
                                "skypilot: the bucket for outputs and caches [default: lora-gym-<family>-<user id>].")
@click.option("--spot", is_flag=True, help="skypilot: spot instances; a preempted run resumes elsewhere.")
@click.option("--dry-run", is_flag=True, help="Print the plan (or with --backend, its command) and exit.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format of --dry-run: json is one document (the plan, and with --backend what it sends).")
@click.option("--from", "from_run", metavar="RUN",
              help="Start a recorded run again (a run id, run folder or run.json): its preset, overrides, expert, "
                   "image and dataset; --set, --backend and the other options apply on top.")
@click.option("--no-check", is_flag=True,
              help="Skip the media check (files open, frames, fps) run before launching; --dry-run skips it too.")
@project_defaults(auto=True)
def run(preset, expert, dataset_dir, overrides, gpu_memory, gpus_per_run, samples_file, backend, output, image,
        gpus, cache_volume, gpu_type, follow, max_hours, max_cost, volume, spot, dry_run, fmt, no_check, from_run):
    """Plan a LoRA training run from PRESET on a dataset folder, and run it with --backend."""
    from launcher import estimate, rerun
    from launcher.backends import LaunchOptions, load_backend, require_sdk
    from launcher.cli import render
    from launcher.core.errors import UserError

    given_dataset, extra = dataset_dir, overrides
    if from_run:  # the recorded run's inputs, the flags given on top (launcher/rerun.py)
        recorded, again = rerun.inputs(from_run, preset=preset, expert=expert, dataset=dataset_dir,
                                       overrides=overrides, image=image, backend=backend)
        preset, expert, dataset_dir, overrides, image, backend = (again.preset, again.expert, again.dataset,
                                                                  again.overrides, again.image, again.backend)
        if backend is None and not dry_run:
            raise UserError("running needs a backend: add --backend local, modal, runpod or skypilot, or --dry-run "
                            "to see the plan")
    refuse_misplaced(backend, backend_names())
    if backend and not dry_run:
        require_sdk(backend)
    job = build_job(preset, expert, dataset_dir, overrides, gpu_memory, gpus_per_run, samples_file)
    if from_run:
        rerun.check(recorded, job, given_dataset, extra)
    say_notes()
    if backend is None:  # only with --dry-run: without it, project_defaults picked a backend or refused
        click.echo(render.as_json(job) if fmt == "json" else render.plan_text(job, click.get_current_context()))
        return 0
    options = LaunchOptions(dataset=dataset_dir, output=output, image=image, gpus=gpus, cache_volume=cache_volume,
                            gpu_type=gpu_type, follow=follow, max_hours=max_hours, max_cost=max_cost, volume=volume,
                            spot=spot)
    chosen = load_backend(backend)
    if dry_run:  # the whole text first: a value it refuses leaves nothing printed
        footer = None
        if fmt == "json":
            text = json.dumps(plan_document(job, backend, options), indent=2)
        else:  # stdout stays what the platform takes (JSON, YAML, a shell command); the estimate, made after it
            text = chosen.dry_run(job, options)  # (RunPod's prices: the offline catalog it sets), goes to stderr
            footer = estimate.run_line(backend, chosen, job, options) + render.next_step(click.get_current_context())
        _note_hour_limit(job, max_hours)
        click.echo(text)
        if footer:
            click.echo(footer, err=True)
        return 0
    chosen.check(job, options)  # every value handed to the engine or platform, before anything is printed
    _note_hour_limit(job, max_hours)
    warnings, seconds = ([], None) if no_check else check_media(job, expert, dataset_dir)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if hasattr(chosen, "quote"):  # a paid platform: say what it will cost before starting anything
        quote_run(chosen, job, options, seconds)
    if backend != "local":  # a cloud pulls by reference: pin the tag to the digest it names now (not in a dry run)
        from launcher.backends import registry_digest

        options = registry_digest.pinned(options, job.loaded.preset.family)
    try:
        return chosen.launch(job, options)
    finally:  # what `launcher run --from` and `launcher diff` read back (the record the backend made, if any)
        rerun.remember(job, options)


def _note_hour_limit(job, max_hours: float | None) -> None:
    preset_hours = job.loaded.preset.resources.time_limit_hours
    if max_hours is not None and max_hours > preset_hours:
        click.echo(f"note: --max-hours {max_hours:g} raises the preset's time limit of {preset_hours:g} h",
                   err=True)


def samples_override(path: str) -> str:
    import json
    from pathlib import Path

    from launcher.core.errors import UserError
    from launcher.core.inputs import existing_file
    from launcher.core.samples import parse_samples_file

    existing_file(Path(path), "--samples file", "give a text file with one prompt per line")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--samples {path}: cannot read it ({exc.__class__.__name__}): give a UTF-8 text file") \
            from None
    return "samples.prompts=" + json.dumps(parse_samples_file(text, path), separators=(",", ":"))


def quote_run(backend, job, options, seconds: float | None):
    """Print the estimate and refuse a run over --max-cost; the launcher.cost.Estimate (None without one)."""
    from launcher import cost
    from launcher.core.errors import UserError

    if seconds is None:
        if options.max_cost is not None:
            raise UserError("--max-cost needs the time estimate of the media check: drop --no-check")
        click.echo("estimate: none (the media check was skipped with --no-check)", err=True)
        return None
    est = cost.estimate(seconds, backend.quote(job, options))
    click.echo(est.line(), err=True)
    cost.check_budget(est, options.max_cost)
    return est


def build_job(preset, expert, dataset_dir, overrides, gpu_memory=None, gpus_per_run=None, samples_file=None):
    """The validated Job of a run's inputs (also `launcher mcp`'s): bad input fails here, before any backend."""
    from launcher.core.job import prepare

    if samples_file:  # as an override, so it reaches every backend's container in LORA_GYM_SET
        overrides = (*overrides, samples_override(samples_file))
    # --gpu-memory travels as an override, to the container too.
    return prepare(preset, expert, with_gpus_per_run(with_gpu_memory(overrides, gpu_memory), gpus_per_run),
                   dataset_dir)


def plan_document(job, backend: str, options) -> dict:
    """`run --dry-run --backend B --format json`: the plan and what the backend would send, one document."""
    from launcher import estimate
    from launcher.backends import load_backend
    from launcher.cli import render

    chosen = load_backend(backend)
    launch = chosen.dry_run_data(job, options)  # first: RunPod's quote then prices from its offline catalog
    return {"plan": render.plan_data(job), "backend": backend, "launch": launch,
            "estimate": estimate.run_line(backend, chosen, job, options)}


def check_media(job, expert: str | None, dataset_dir: str) -> tuple[list[str], float]:
    """`launcher dataset check` on the job's dataset before GPU time is spent: errors stop the run (exit 2, one
    `error:` line each); the warnings are returned. --dry-run never comes here, so planning stays free of
    Pillow and PyAV (tests/test_imports.py) and works on an install without lora-gym[dataset].
    Returns the warnings and the estimated training time in seconds."""
    from launcher.cli.dataset_cmd import trainings_for
    from launcher.core.errors import UserError
    from launcher.media import require
    from launcher.media.check import check_dataset

    require(hint=", or add --no-check to launch without the media check")
    preset = job.loaded.preset
    report = check_dataset(dataset_dir, preset, trainings_for(preset, expert), layout=job.layout)
    if report.errors:
        raise UserError(*(p.message for p in report.errors))
    return [p.message for p in report.warnings], report.seconds
