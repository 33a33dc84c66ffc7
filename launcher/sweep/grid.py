"""A sweep's grid: `--grid KEY=V1,V2,...` options or a small TOML file, expanded into one override set per
combination. Pure: the values stay strings and are checked by the preset schema, like `--set` (so `nan`, an
unknown key or a wrong type fails exactly as it would with `--set`, in launcher/sweep/prepare.py)."""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.core.errors import UserError
from launcher.core.inputs import toml_data

# Past this many runs a typo (a grid over 8 x 8 x 8 values) would rent a fleet: ask for --yes.
MAX_RUNS_WITHOUT_YES = 64
# Hard ceiling even with --yes: each run is a record, a container and a row of `launcher status`.
MAX_RUNS = 1024
# Keys the preset itself decides: a grid over them would train one preset's weights as another model.
PRESET_KEYS = {
    "model.task": "the preset decides the task (t2v or i2v, and its DiTs): sweep each task's own preset, e.g. "
                  "wan22-t2v-lightning and wan22-i2v-lightning, in separate sweeps",
    "family": "the preset decides the model family: sweep a preset of each family separately",
    "name": "each run is named after the preset: copy it with `launcher presets cp` to sweep another name",
}


@dataclass(frozen=True)
class Axis:
    key: str  # a dotted preset key, as `--set` takes it
    values: tuple[str, ...]


def parse_option(text: str) -> Axis:
    """`train.learning_rate=5e-5,8e-5` -> Axis; empty keys or values are refused."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--grid {text!r} is not KEY=V1,V2,...: e.g. --grid train.learning_rate=5e-5,1e-4")
    return _axis(key, [v.strip() for v in values.split(",")], f"--grid {key}")


def _axis(key: str, values: Sequence[str], where: str) -> Axis:
    if not values or any(v == "" for v in values):
        raise UserError(f"{where} has an empty value: list one or more values separated by commas")
    if len(set(values)) != len(values):
        raise UserError(f"{where} lists a value twice: each combination would run twice")
    return Axis(key, tuple(values))


def _scalar(value, where: str) -> str:
    if isinstance(value, bool):  # TOML true/false, as `--set` spells them
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise UserError(f"{where} holds {type(value).__name__} values: use strings, numbers or booleans")


def _flatten(table: dict, prefix: str = "") -> list[tuple[str, object]]:
    found = []
    for name, value in table.items():
        key = f"{prefix}{name}"
        found += _flatten(value, f"{key}.") if isinstance(value, dict) else [(key, value)]
    return found


def read_file(path: str | Path) -> list[Axis]:
    """A TOML grid: `[grid]` (or the top level) maps dotted keys, or nested tables, to lists of values:

        [grid]
        "train.learning_rate" = [5e-5, 8e-5, 1e-4]
        experts.low.network_dim = [32, 42]
    """
    try:
        data = toml_data(Path(path).read_text(encoding="utf-8"), f"--grid-file {path}")
    except FileNotFoundError:
        raise UserError(f"--grid-file {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--grid-file {path} is not valid TOML ({exc})") from None
    table = data.get("grid", data) if isinstance(data.get("grid", data), dict) else {}
    axes = []
    for key, values in _flatten(table):
        where = f"--grid-file {path}: {key}"
        if not isinstance(values, list):
            raise UserError(f"{where} is not a list: write {key} = [value, ...]")
        axes.append(_axis(key, [_scalar(v, where) for v in values], where))
    return axes


def overlaps(one: str, other: str) -> bool:
    """Whether two dotted keys set the same value: equal, or one a table holding the other."""
    return one == other or one.startswith(other + ".") or other.startswith(one + ".")


def combine(options: Sequence[str], file: str | Path | None) -> list[Axis]:
    """Every axis from the options and the file; a key may appear once, and not inside another axis's key."""
    axes = [parse_option(o) for o in options] + (read_file(file) if file else [])
    if not axes:
        raise UserError("a sweep needs a grid: --grid KEY=V1,V2,... (repeatable) or --grid-file FILE")
    for n, axis in enumerate(axes):
        for key, why in PRESET_KEYS.items():
            if overlaps(axis.key, key):
                raise UserError(f"--grid {axis.key}: {why}")
        for earlier in axes[:n]:
            if axis.key == earlier.key:
                raise UserError(f"--grid {axis.key} is given twice: list all its values in one --grid")
            if overlaps(axis.key, earlier.key):
                raise UserError(f"--grid {axis.key} and --grid {earlier.key} set the same value: keep one of them")
    return axes


def check_fixed(axes: Sequence[Axis], fixed: Sequence[tuple[str, str]]) -> None:
    """Refuse a grid key that an option also sets for every run ((key, option) pairs: `--set KEY=...`,
    `--gpu-memory`): the grid's values would silently win over it."""
    for axis in axes:
        for key, option in fixed:
            if overlaps(axis.key, key):
                raise UserError(f"{axis.key} is given both in --grid and in {option}: drop one (a grid value would "
                                "replace the other for every run)")


def combinations(axes: Sequence[Axis], yes: bool = False) -> list[tuple[str, ...]]:
    """One tuple of `key=value` overrides per combination, the first axis varying slowest."""
    count = 1
    for axis in axes:
        count *= len(axis.values)
    if count > MAX_RUNS:
        raise UserError(f"the grid makes {count} runs, more than {MAX_RUNS}: split it into several sweeps")
    if count > MAX_RUNS_WITHOUT_YES and not yes:
        raise UserError(f"the grid makes {count} runs (over {MAX_RUNS_WITHOUT_YES}): add --yes if you mean it")
    return [tuple(f"{axis.key}={value}" for axis, value in zip(axes, values, strict=True))
            for values in itertools.product(*(axis.values for axis in axes))]
