"""`launcher init` (a project file and a dataset folder) and `launcher config` (the values in effect)."""

from __future__ import annotations

from pathlib import Path

import click

from launcher.cli.project import META, PARAM_KEYS, project_defaults
from launcher.core.projectfile import FILE_NAME

TEMPLATE = """\
# LoRA Gym project file: the defaults of every `launcher` command typed in this folder or below it.
# A flag overrides a value here; `launcher config` shows each value in effect and where it came from.
# Paths are relative to this file's folder. Uncomment a line to use it.

dataset = "dataset"           # the training media, a .txt caption beside each (see dataset/README.txt)
output = "runs"               # where runs on this machine write their LoRAs and run.json
# backend = "local"           # local, modal, runpod or skypilot [default: local when the preset's image is here]
# registry = "ghcr.io/you"    # where `make push-wan22 REGISTRY=...` pushed the images (as LORA_GYM_REGISTRY)
# gpu_ids = "all"             # this machine's GPUs by id: all, none, or ids such as "0,1"
# gpu_memory = 24             # GPU memory to fit, in GB (as --gpu-memory)

# A [backends.NAME] table applies when that backend runs, before the values above.
[backends.local]
# image = "lora-gym-wan22:0.1.0"
# gpu_ids = "0"
# cache_volume = "lora-gym-cache-wan22"
# output = "runs"

[backends.modal]
# gpu = "H100"
# image = "ghcr.io/you/lora-gym-wan22:0.1.0"
# cache_volume = "lora-gym-cache-wan22"
# max_hours = 12
# max_cost = 60

[backends.runpod]
# gpu = "NVIDIA H100 80GB HBM3"
# image = "ghcr.io/you/lora-gym-wan22:0.1.0"
# volume = "VOLUME_ID"
# max_hours = 12
# max_cost = 60

[backends.skypilot]
# gpu = "H100"
# image = "ghcr.io/you/lora-gym-wan22:0.1.0"
# volume = "my-bucket"
# spot = true
# max_hours = 12
# max_cost = 60
"""

# A README, not README.md: the dataset check ignores a .txt that captions no media, and refuses other files.
DATASET_README = """\
Put the training media here, each with a caption beside it: a text file of the same name ending in .txt.

    dataset/
        clip01.mp4      clip01.txt      videos: .mp4 .webm .mov .mkv
        photo01.png     photo01.txt     images: .png .jpg .jpeg .webp .bmp

Images and videos may also go in subfolders named images/ and videos/. Each caption describes its file and
names what the LoRA learns by one word (the anchor). `launcher caption dataset --anchor WORD` writes the
missing captions; `launcher dataset check --preset NAME` checks everything before a GPU is rented.
"""


@click.command(epilog="""\b
Examples:
  launcher init
  launcher init ./my-project""")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), default=".")
def init(directory: Path):
    """Make a project in DIRECTORY (default: here): lora-gym.toml with the defaults every command uses, and a
    dataset/ folder with a README of the expected layout. Nothing that exists is changed."""
    from launcher.core.inputs import creatable_dir

    creatable_dir(directory, "the project folder")
    directory.mkdir(parents=True, exist_ok=True)
    _write_once(directory / FILE_NAME, TEMPLATE)
    dataset = directory / "dataset"
    if dataset.exists():
        click.echo(f"kept {dataset}/ (it exists; nothing added to it)")
    else:
        dataset.mkdir()
        _write_once(dataset / "README.txt", DATASET_README)
    click.echo("next: put your media and captions in dataset/, build an image (make image-wan22), then "
               "`launcher run --preset wan22-t2v-lightning`")
    return 0


def _write_once(path: Path, text: str) -> None:
    try:
        with path.open("x", encoding="utf-8") as handle:  # "x": never replaces a file that appeared meanwhile
            handle.write(text)
        click.echo(f"wrote {path}")
    except FileExistsError:
        click.echo(f"kept {path} (it exists)")


def _run_params():
    """`launcher run`'s own options for the project file's keys: config takes and converts them alike."""
    from launcher.cli.run_cmd import run

    return [p for p in run.params if p.name in PARAM_KEYS]


@project_defaults(need_dataset=False)
def _show(**values):
    resolved = click.get_current_context().meta[META]
    where = resolved.project.path or f"none in {Path.cwd()} or its parents (`launcher init` writes one)"
    rows = [("project file", str(where), "")]
    for name in PARAM_KEYS:
        if name in values:
            rows.append((PARAM_KEYS[name], _shown(values[name]), resolved.sources.get(name, "built-in default")))
    rows.append(("registry", _shown(resolved.registry[0]), resolved.registry[1]))
    width = max(len(r[1]) for r in rows)
    for key, value, source in rows:
        click.echo(f"{key:<13} {value:<{width}}  {source}".rstrip())
    return 0


def _shown(value) -> str:
    return "(none)" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


config = click.Command(
    "config", callback=_show, params=_run_params(),
    help="Show the values every command uses here and where each comes from: flag, project file "
         f"({FILE_NAME} here or in a parent), environment, or built-in default. Takes `launcher run`'s flags.",
    epilog="\b\nExamples:\n  launcher config\n  launcher config --backend runpod\n  launcher config --output /tmp/runs")
