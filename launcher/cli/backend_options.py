"""Which backends each option of `run` and `sweep` applies to, in one table both commands check before anything
else: an option the chosen backend never reads (`--gpu H100 --backend local`), or a backend option with no
backend at all, would do nothing while the command exits 0, so it is refused in one line naming the backends it
is for. Every option must be in the table or in EVERYWHERE (tests/test_input_engines.py holds both commands to
it), so a new option declares where it applies."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import click
from click.core import ParameterSource

from launcher.core.errors import UserError

# Option (click's parameter name) -> the backends that read it (their LaunchOptions field).
APPLIES = {
    "output": ("local",),
    "image": ("local", "modal", "runpod", "skypilot"),
    "gpus": ("local",),  # --gpu-ids: Docker's device ids on this machine
    "cache_volume": ("local", "modal"),
    "gpu_type": ("modal", "runpod", "skypilot"),
    "follow": ("local", "modal", "runpod", "skypilot"),  # local always streams to the end
    "max_hours": ("modal", "runpod", "skypilot"),
    "max_cost": ("modal", "runpod"),  # SkyPilot's optimizer picks the cloud, so the price, only at launch:
    # see `sky show-gpus` for prices
    "volume": ("runpod", "skypilot"),
    "spot": ("skypilot",),
}
# Options of the plan or of the command itself: they apply with every backend and without one.
EVERYWHERE = ("preset", "expert", "dataset_dir", "overrides", "gpu_memory", "gpus_per_run", "samples_file",
              "backend", "dry_run", "fmt", "no_check", "grid_options", "grid_file", "yes", "renamed_gpus",
              "from_run")


def _either(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def refuse_misplaced(backend: str | None, available: list[str]) -> None:
    """UserError for the first option given on the command line that `backend` (None: the plan only) does not
    read; `available` are the backends this command can run on."""
    ctx = click.get_current_context()
    given = [p.name for p in ctx.command.params if p.name not in EVERYWHERE
             and ctx.get_parameter_source(p.name) not in (None, ParameterSource.DEFAULT)]
    refuse_given(backend, given, {p.name: p.opts[0] for p in ctx.command.params}, available)


def refuse_given(backend: str | None, given: Iterable[str], flags: Mapping[str, str], available: list[str]) -> None:
    """The same for options by name (`launcher mcp` passes the fields a tool call set), each shown as its flag."""
    for name in given:
        applies = [b for b in APPLIES[name] if b in available]
        if backend in applies:
            continue
        flag = flags[name]
        if backend is None:
            raise UserError(f"{flag} applies only with --backend {_either(applies)}: add the backend, or drop {flag}")
        raise UserError(f"{flag} applies to --backend {_either(applies)}, not {backend}: drop {flag}, or use "
                        f"--backend {applies[0]}")


def _renamed(ctx, param, value):
    if value is not None:
        raise UserError("--gpus is now --gpu-ids (local: which GPUs by id, e.g. --gpu-ids 0,1); for how many GPUs "
                        "each training uses, --gpus-per-run N")
    return value


# The old name, kept only to point at the new ones: `--gpus 2` read as "two GPUs" but meant GPU number 2.
renamed_gpus_option = click.option("--gpus", "renamed_gpus", hidden=True, expose_value=False, is_eager=True,
                                   callback=_renamed)

gpu_ids_option = click.option(
    "--gpu-ids", "gpus", default="all", show_default=True, metavar="IDS",
    help="local: which GPUs by id: all, none, or ids such as 0,1 (`nvidia-smi -L`); in a sweep, several ids run one "
         "training per GPU at a time.")
