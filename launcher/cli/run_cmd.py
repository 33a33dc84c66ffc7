"""`launcher run`: plan a training run; `--dry-run` prints the exact commands the container will run."""

from __future__ import annotations

import click

from launcher.cli.options import set_option


@click.command(epilog="""\b
Examples:
  launcher run --preset wan22-t2v-lightning --expert high --dataset ./my-dataset --dry-run
  launcher run --preset wan21-t2v-1.3b --dataset ./my-dataset --set train.max_train_epochs=20 --dry-run
  launcher run --preset ./my-preset.toml --expert both --dataset ./my-dataset --dry-run --format json""")
@click.option("--preset", required=True, help="A preset name (see `launcher presets list`) or a .toml path.")
@click.option("--expert", type=click.Choice(["high", "low", "both"]),
              help="Wan 2.2 only: which expert to train; `both` caches once and trains both.")
@click.option("--dataset", "dataset_dir", required=True, type=click.Path(),
              help="Folder of images/videos with a .txt caption beside each (or images/ and videos/).")
@set_option
@click.option("--dry-run", is_flag=True, help="Print the plan (every command, the dataset config) and exit.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Output format of --dry-run.")
def run(preset, expert, dataset_dir, overrides, dry_run, fmt):
    """Plan a LoRA training run from PRESET on a dataset folder."""
    from launcher.cli import render
    from launcher.core.errors import UserError
    from launcher.core.job import prepare

    job = prepare(preset, expert, overrides, dataset_dir)
    if not dry_run:
        raise UserError("running needs a backend (local Docker/Podman, Modal, RunPod), which is not built "
                        "yet: add --dry-run to see the exact plan")
    click.echo(render.as_json(job) if fmt == "json" else render.as_text(job))
