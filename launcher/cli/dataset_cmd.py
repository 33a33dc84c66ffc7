"""`launcher dataset check|prepare`: the media checks before renting a GPU, and a 16 fps copy of a dataset."""

from __future__ import annotations

from pathlib import Path

import click

from launcher.cli.options import (
    gpu_memory_option,
    gpus_per_run_option,
    set_option,
    with_gpu_memory,
    with_gpus_per_run,
)
from launcher.cli.project import project_defaults


@click.group(epilog="""\b
Examples:
  launcher dataset check ./my-dataset --preset wan21-t2v-14b
  launcher dataset check ./my-dataset --preset wan22-t2v-lightning --expert both --details
  launcher dataset check ./my-dataset --preset wan21-t2v-14b --gpu-memory 24
  launcher dataset prepare ./my-dataset ./my-dataset-16fps""")
def dataset():
    """Check a dataset against a preset, or prepare a 16 fps copy of it (needs lora-gym[dataset])."""


def trainings_for(preset, expert: str | None) -> int:
    """How many trainings the figures cover: Wan 2.2 without --expert is reported per expert."""
    from launcher.core.plan import experts_to_train

    if preset.experts is not None and expert is None:
        return 1
    return len(experts_to_train(preset, expert))


@dataset.command("check", short_help="Check a dataset against a preset before renting a GPU.")
@click.argument("directory", type=click.Path(), required=False)
@click.option("--preset", required=True, help="A preset name (see `launcher presets list`) or a .toml path.")
@click.option("--expert", type=click.Choice(["high", "low", "both"]),
              help="Wan 2.2 only: `both` counts both trainings; without it the figures are per expert.")
@set_option
@gpu_memory_option
@gpus_per_run_option
@click.option("--details", is_flag=True, help="Also list every image's bucket and the frames each entry takes.")
@click.option("--headers-only", is_flag=True,
              help="Read headers only, decode no pixels: fast, but a truncated or corrupt file passes.")
@project_defaults()
def check(directory, preset, expert, overrides, gpu_memory, gpus_per_run, details, headers_only):
    """Check every file of DIRECTORY (default: the project file's dataset, else ./dataset) against PRESET: it
    opens, captions, frames, fps, buckets, steps, time, and whether the largest bucket fits the GPU memory (with
    the block swap the plan would choose).

    Prints the problems (errors and warnings) and a summary; exits 2 if there is an error.
    """
    from launcher.core.errors import UserError
    from launcher.core.presets import load_preset
    from launcher.media import require
    from launcher.media.check import check_dataset, render

    loaded = load_preset(preset, with_gpus_per_run(with_gpu_memory(overrides, gpu_memory), gpus_per_run))
    trainings = trainings_for(loaded.preset, expert)
    require()
    report = check_dataset(directory, loaded.preset, trainings, decode=not headers_only)
    click.echo(render(report, details))
    if report.errors:
        count = len(report.errors)
        raise UserError(f"{count} error{'s' if count > 1 else ''} in {directory}: fix the errors in the problems "
                        "table above and check again")


@dataset.command("prepare", short_help="Copy a dataset with every video at 16 fps and 4N+1 frames.")
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("destination", type=click.Path(path_type=Path))
def prepare(source: Path, destination: Path):
    """Copy SOURCE into the new folder DESTINATION, every video resampled to 16 fps and trimmed to 4N+1 frames.

    Images and captions are copied as they are; SOURCE is never changed.
    """
    from launcher.media import require
    from launcher.media.prepare import prepare_dataset

    require()
    summary = prepare_dataset(source, destination)
    click.echo(f"{summary}; check it with: launcher dataset check {destination} --preset NAME")
