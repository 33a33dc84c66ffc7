"""`launcher presets list|show|cp`."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from launcher.cli.options import set_option


@click.group(epilog="""\b
Examples:
  launcher presets list
  launcher presets show wan21-t2v-14b --set train.learning_rate=5e-5
  launcher presets cp wan22-i2v-lightning ./my-preset.toml""")
def presets():
    """List, show and copy training presets. A path to a .toml file works wherever a name does."""


@presets.command("list")
def list_presets():
    """Every shipped preset, with its task, experts and GPU class."""
    rows = [(r["name"], r["task"], ", ".join(r["experts"]) or "-", f"{r['gpu_memory_gb']} GB", r["description"])
            for r in preset_rows()]
    header = ("PRESET", "TASK", "EXPERTS", "GPU", "DESCRIPTION")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        click.echo("  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[4])


def preset_rows() -> list[dict]:
    """One row per shipped preset: what `presets list` prints (and `launcher mcp` returns as data)."""
    from launcher.core.presets import load_preset, preset_names

    rows = []
    for name in preset_names():
        p = load_preset(name).preset
        rows.append({"name": name, "task": p.model.task, "experts": ["high", "low"] if p.experts else [],
                     "gpu_memory_gb": p.resources.gpu_memory_gb, "description": p.description})
    return rows


@presets.command("show", epilog="""\b
Examples:
  launcher presets show wan22-t2v-lightning
  launcher presets show wan22-t2v-lightning --keys
  launcher presets show wan22-t2v-lightning --keys --set dataset.videos.uniform.resolution=640x368""")
@click.argument("preset")
@set_option
@click.option("--keys", is_flag=True,
              help="One line per key --set takes: its dotted name, value, and what it accepts (from the schema).")
def show(preset, overrides, keys):
    """The fully resolved values of PRESET (defaults filled in, overrides applied), as TOML."""
    import tomli_w

    from launcher.core.presets import load_preset

    loaded = load_preset(preset, overrides)
    if keys:
        click.echo("\n".join(key_lines(loaded.preset)))
        return
    click.echo(f"# {loaded.origin}, resolved (sha256 {loaded.content_hash[:12]})")
    click.echo(tomli_w.dumps(loaded.preset.model_dump(mode="json", exclude_none=True)), nl=False)
    p = loaded.preset
    fitted = (("model.fp8_base", p.model.fp8_base), ("train.blocks_to_swap", p.train.blocks_to_swap),
              ("train.gradient_checkpointing_cpu_offload", p.train.gradient_checkpointing_cpu_offload))
    auto = [key for key, value in fitted if value is None]
    if auto:  # unset: TOML has no null, so say where they come from (the keys still take --set)
        click.echo(f"# chosen to fit resources.gpu_memory_gb (see run --dry-run): {', '.join(auto)}")


@presets.command("cp")
@click.argument("preset")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Replace PATH if it already exists (a file or a symlink).")
def copy(preset, path: Path, force: bool):
    """Copy PRESET to PATH (a file, or a folder to copy into) to edit it; named after the new file.

    The copy's `name` becomes the file's stem, so LoRAs trained from an edited copy are not named after the
    original. An existing PATH is never replaced without --force.
    """
    from launcher.core.inputs import new_file
    from launcher.core.presets import load_preset, read_source

    origin, text = read_source(preset)
    load_preset(preset)  # refuse to copy a broken user preset
    file_name = Path(origin).name if origin.endswith(".toml") else f"{origin}.toml"  # "1.3b" is no suffix
    target = new_file(path / file_name if path.is_dir() else path, "destination", force)
    renamed = renamed_preset(text, target.name.removesuffix(".toml"))
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_text(renamed, encoding="utf-8")
    if target.is_symlink():  # replace the link itself (with --force), never the file it points to
        target.unlink()
    shutil.move(tmp, target)
    click.echo(f"copied {origin} to {target}; run it with: launcher run --preset {target} ...")


def renamed_preset(text: str, stem: str) -> str:
    """The preset text with its top-level `name` set from a file stem (lower case, other characters as '-')."""
    import re

    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")[:100] or "my-preset"
    line = re.compile(r'^name\s*=\s*"[^"\n]*"[ \t]*$', re.MULTILINE)
    return line.sub(f'name = "{name}"', text, count=1) if line.search(text) else f'name = "{name}"\n{text}'


def key_lines(preset) -> list[str]:
    """`presets show --keys`: aligned KEY, VALUE, ACCEPTS columns; a long value gets the rest of its line."""
    from launcher.core.preset_keys import settable_keys

    rows = [(k.key, k.value, k.accepts) for k in settable_keys(preset)]
    key_width = max(len(r[0]) for r in rows)
    value_width = min(24, max(len(r[1]) for r in rows))
    header = f"{'KEY':<{key_width}}  {'VALUE':<{value_width}}  ACCEPTS"
    return [header] + [f"{key:<{key_width}}  {value:<{value_width}}  {accepts}" for key, value, accepts in rows] + \
        ["# --set KEY=VALUE takes these keys; an entry of dataset.videos goes by its name or its index (from 0)"]
