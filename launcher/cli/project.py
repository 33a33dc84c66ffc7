"""Where a command's defaults come from: flag, then the project file (lora-gym.toml), then the environment,
then a built-in default. One decorator, `project_defaults`, gives `run`, `sweep`, `dataset check` and
`caption` the same resolution without a second list of their options: it fills the parameters the user did
not type from the project file, converted by the command's own click types, and records where each came from
(`launcher config` prints that record).

Run and sweep also get the choices that make `launcher run --preset wan22-t2v-lightning` work as typed: a
Wan 2.2 preset without --expert trains both experts, and without --backend (and --dry-run) the run goes to
this machine when the family's image is there. Each such choice is a `note:` line on stderr, printed once
the inputs are checked (say_notes), so a refused command prints only its error.
"""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import click

from launcher.core import projectfile
from launcher.core.errors import UserError

# A command's parameter name -> the project file key that gives its default.
PARAM_KEYS = {"dataset_dir": "dataset", "directory": "dataset", "output": "output", "backend": "backend",
              "image": "image", "gpus": "gpu_ids", "cache_volume": "cache_volume", "gpu_type": "gpu",
              "max_hours": "max_hours", "max_cost": "max_cost", "volume": "volume", "spot": "spot",
              "gpu_memory": "gpu_memory"}
REGISTRY_ENV = "LORA_GYM_REGISTRY"  # launcher.backends.labels.REGISTRY_ENV; not imported, to keep this light
DEFAULT_DATASET = "dataset"  # used when it exists and neither a flag nor the project file names one
META = "lora_gym.project"  # where the Resolution of the running command is kept in click's context
EXPERT_ROLES = ("high-noise expert: composition, motion and layout (early steps); low-noise expert: detail, "
                "texture and identity/likeness (late steps)")


@dataclass
class Resolution:
    project: projectfile.ProjectFile
    values: dict  # the command's parameters, filled in
    sources: dict[str, str] = field(default_factory=dict)  # parameter -> where its value came from
    registry: tuple[str | None, str] = (None, "built-in default")  # the image registry, and where it came from
    notes: list[str] = field(default_factory=list)  # said by say_notes() once the inputs are checked


def project_defaults(auto: bool = False, need_dataset: bool = True):
    """Decorate a command's function (innermost, below its options): fill its parameters from the project file;
    `auto` (run, sweep) also picks the expert and the backend as the module docstring says; `need_dataset`
    refuses a command left without a dataset folder, in one line that says where one can come from."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(**kwargs):
            ctx = click.get_current_context()
            if kwargs.get("from_run"):  # `run --from RUN`: the recorded run is the defaults (launcher/rerun.py)
                return func(**kwargs)
            if "preset" in kwargs and kwargs["preset"] is None:  # optional only because --from can name it
                raise UserError("missing --preset: give --preset NAME (see `launcher presets list`), or --from RUN "
                                "to start a recorded run again")
            project = projectfile.load(projectfile.find(Path.cwd()))
            registry = registry_of(project)  # before registry_env sets the variable from the project file
            with registry_env(project):
                resolved = resolve(ctx, project, kwargs)
                resolved.registry = registry
                if auto:
                    _default_expert(resolved)
                    _pick_backend(ctx, resolved)
                if need_dataset:
                    _require_dataset(resolved)
                ctx.meta[META] = resolved
                return func(**resolved.values)
        return wrapper
    return decorate


def resolve(ctx: click.Context, project: projectfile.ProjectFile, kwargs: dict) -> Resolution:
    """Flags as typed; the rest from the project file (the chosen backend's table first); then ./dataset."""
    resolved = Resolution(project, dict(kwargs))
    typed = {name for name in kwargs if _typed(ctx, name)}
    resolved.sources.update({name: "flag" for name in typed & PARAM_KEYS.keys()})
    _fill(ctx, resolved, {"backend"} - typed, None)
    _fill(ctx, resolved, PARAM_KEYS.keys() - typed - {"backend"}, resolved.values.get("backend"))
    for name in ("dataset_dir", "directory"):
        if name in kwargs and resolved.values[name] is None and Path(DEFAULT_DATASET).is_dir():
            resolved.values[name] = _convert(ctx, name, DEFAULT_DATASET, "built-in default")
            resolved.sources[name] = f"built-in default (./{DEFAULT_DATASET} exists)"
    return resolved


def _typed(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _fill(ctx: click.Context, resolved: Resolution, names, backend: str | None) -> None:
    for name in sorted(names):
        if name not in resolved.values:
            continue
        hit = resolved.project.value(PARAM_KEYS[name], backend)
        if hit is not None:
            where = f"{resolved.project.path} ({hit[1]})"
            resolved.values[name] = _convert(ctx, name, hit[0], where)
            resolved.sources[name] = f"project file {where}"


def _convert(ctx: click.Context, name: str, value, where: str):
    """The value through the command's own click type, as if typed; a refusal names the file and key."""
    param = next(p for p in ctx.command.params if p.name == name)
    try:
        return param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        raise UserError(f"{where}: {exc.format_message()}") from None


def registry_of(project: projectfile.ProjectFile) -> tuple[str | None, str]:
    if os.environ.get(REGISTRY_ENV):
        return os.environ[REGISTRY_ENV], f"environment ({REGISTRY_ENV})"
    if "registry" in project.top:
        return project.top["registry"], f"project file {project.path} (registry)"
    return None, "built-in default"


@contextlib.contextmanager
def registry_env(project: projectfile.ProjectFile):
    """The project file's registry, as LORA_GYM_REGISTRY for this command only (the environment wins): every
    backend names the default image from that variable (labels.default_image)."""
    registry = project.top.get("registry")
    if not registry or os.environ.get(REGISTRY_ENV):
        yield
        return
    os.environ[REGISTRY_ENV] = registry
    try:
        yield
    finally:
        os.environ.pop(REGISTRY_ENV, None)


def _default_expert(resolved: Resolution) -> None:
    values = resolved.values
    if "expert" not in values or values["expert"] is not None:
        return
    from launcher.core.presets import load_preset

    preset = load_preset(values["preset"], ()).preset  # a bad preset fails here with the same error as later
    if preset.experts is not None:
        values["expert"] = "both"
        resolved.sources["expert"] = "built-in default"
        resolved.notes.append(f"{preset.name} is a Wan 2.2 preset and --expert was not given: training both "
                              f"experts ({EXPERT_ROLES}); --expert high or low trains one")


def _pick_backend(ctx: click.Context, resolved: Resolution) -> None:
    """No --backend and no --dry-run: the local backend when the family's image is here, else one error line
    that names everything missing (dataset, backend or image, output folder) and how to get it."""
    if resolved.values.get("backend") is not None or resolved.values.get("dry_run"):
        return
    missing = [] if _dataset(resolved.values) is not None else [_NO_DATASET]
    # As if --backend local were typed: its table (an image, an output folder) counts in the choice.
    local = Resolution(resolved.project, dict(resolved.values), dict(resolved.sources))
    _fill(ctx, local, {n for n in PARAM_KEYS if local.sources.get(n) != "flag"} - {"backend"}, "local")
    image, reason = local_image(local.values)
    if reason is not None:
        missing.append(f"no backend ({reason}; or pass --backend modal, runpod or skypilot)")
    elif local.values.get("output") is None:
        missing.append("no output folder (pass --output ./runs, or set output in lora-gym.toml)")
    if missing:
        raise UserError(f"cannot start the {ctx.command.name}: {'; '.join(missing)}; `launcher init` writes these "
                        "defaults to lora-gym.toml")
    resolved.values, resolved.sources = local.values, local.sources
    resolved.values["backend"] = "local"
    resolved.sources["backend"] = f"built-in default ({image} is on this machine)"
    resolved.notes.insert(0, f"running on this machine (the local backend): {image} is here; --backend modal, "
                             "runpod or skypilot runs elsewhere")


_NO_DATASET = f"no dataset (put the files in ./{DEFAULT_DATASET}, or pass --dataset DIR)"


def _dataset(values: dict):
    return values.get("dataset_dir", values.get("directory"))


def _require_dataset(resolved: Resolution) -> None:
    if ("dataset_dir" in resolved.values or "directory" in resolved.values) and _dataset(resolved.values) is None:
        flag = "--dataset DIR" if "dataset_dir" in resolved.values else "the folder (DIRECTORY)"
        raise UserError(f"no dataset: pass {flag}, put the files in ./{DEFAULT_DATASET}, or set dataset in "
                        "lora-gym.toml (`launcher init` writes one)")


def local_image(values: dict) -> tuple[str, str | None]:
    """(the image the local backend would run, None when this machine's engine has it, else why not)."""
    from launcher.backends import labels, local
    from launcher.core.presets import load_preset

    family = load_preset(values["preset"], ()).preset.family
    image = values.get("image") or labels.default_image(family)
    return image, local.image_missing(image, family)


def say_notes() -> None:
    """The resolution's choices, as `note:` lines on stderr: first, before the command's own output."""
    resolved = click.get_current_context().meta.get(META)
    for note in resolved.notes if resolved else ():
        click.echo(f"note: {note}", err=True)
