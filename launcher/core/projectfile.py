"""The project file, `lora-gym.toml`: defaults every command uses, found in the current folder or a parent.

Made by `launcher init`; flags override it (launcher/cli/project.py resolves them). Strict: an unknown key,
a wrong type or an unknown backend is an error naming the file, the key and the valid keys, so a typo never
silently falls back to a built-in default. Paths in it are relative to the folder that holds it, so a
command typed in a subfolder finds the same dataset.

Per-backend settings are tables named [backends.NAME], plural: TOML cannot hold `backend = "runpod"` (the
default backend) and a `[backend.runpod]` table, since one key cannot be both a string and a table.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from launcher.core.errors import UserError, closest

FILE_NAME = "lora-gym.toml"

# Each key, its TOML type and what it means (the meaning is shown by `launcher config` and the docs).
TOP_KEYS: dict[str, type] = {"dataset": str, "output": str, "backend": str, "registry": str, "gpu_ids": str,
                             "gpu_memory": int}
_CLOUD = {"gpu": str, "image": str, "max_hours": float, "max_cost": float}
# The keys a [backends.NAME] table takes: the options of `launcher run` that apply to that backend.
BACKEND_KEYS: dict[str, dict[str, type]] = {
    "local": {"image": str, "gpu_ids": str, "cache_volume": str, "output": str},
    "modal": {**_CLOUD, "cache_volume": str},
    "runpod": {**_CLOUD, "volume": str},
    "skypilot": {**_CLOUD, "volume": str, "spot": bool},
}
PATH_KEYS = ("dataset", "output")
TYPE_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true or false"}


@dataclass(frozen=True)
class ProjectFile:
    path: Path | None  # None: no project file was found
    top: dict = field(default_factory=dict)
    backends: dict[str, dict] = field(default_factory=dict)

    def value(self, key: str, backend: str | None) -> tuple[object, str] | None:
        """(value, where) from the backend's table, else the top level; None when the file does not set it."""
        table = self.backends.get(backend or "", {})
        for where, values in ((f"[backends.{backend}] {key}", table), (key, self.top)):
            if key in values:
                return values[key], where
        return None


def find(start: Path) -> Path | None:
    """The nearest lora-gym.toml in `start` or one of its parents (as git finds .git)."""
    for folder in (start, *start.parents):
        if (folder / FILE_NAME).is_file():
            return folder / FILE_NAME
    return None


def load(path: Path | None) -> ProjectFile:
    """Read and check a project file (None: an empty one); every problem is reported at once."""
    if path is None:
        return ProjectFile(None)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML ({exc}): fix it, or move it away and run `launcher init`") \
            from None
    tables = data.pop("backends", {})
    problems = _check(path, data, TOP_KEYS, "", extra=("backends",))
    valid_tables = ", ".join(f"[backends.{n}]" for n in BACKEND_KEYS)
    if not isinstance(tables, dict):
        problems.append(f"{path}: backends must be tables such as [backends.runpod]: valid ones are {valid_tables}")
        tables = {}
    for name, table in tables.items():
        if name not in BACKEND_KEYS:
            problems.append(f"{path}: unknown table [backends.{name}]{closest(name, BACKEND_KEYS)}: valid ones are "
                            f"{valid_tables}")
        elif not isinstance(table, dict):
            problems.append(f"{path}: backends.{name} must be a table: write [backends.{name}] and its keys below it")
        else:
            problems += _check(path, table, BACKEND_KEYS[name], f"backends.{name}.")
    backend = data.get("backend")
    if isinstance(backend, str) and backend not in BACKEND_KEYS:
        problems.append(f"{path}: backend = {backend!r} is not a backend{closest(backend, BACKEND_KEYS)}: use one of "
                        f"{', '.join(BACKEND_KEYS)}")
    if problems:
        raise UserError(*problems)
    top = _resolve_paths(path.parent, data)
    return ProjectFile(path, top, {name: _resolve_paths(path.parent, table) for name, table in tables.items()})


def _check(path: Path, values: dict, keys: dict[str, type], prefix: str, extra: tuple[str, ...] = ()) -> list[str]:
    problems = []
    valid = ", ".join(sorted((*keys, *extra)))
    for key, value in values.items():
        if key not in keys:
            problems.append(f"{path}: unknown key {prefix}{key}{closest(key, keys)}: valid keys"
                            f"{' in [' + prefix.rstrip('.') + ']' if prefix else ''} are {valid}")
        elif not _fits(value, keys[key]):
            problems.append(f"{path}: {prefix}{key} must be {TYPE_NAMES[keys[key]]}, not {value!r}")
    return problems


def _fits(value: object, kind: type) -> bool:
    if kind is float:  # TOML writes 10 and 10.0 differently; both are a number of hours or dollars
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _resolve_paths(folder: Path, values: dict) -> dict:
    """Paths relative to the project file's folder, so the same dataset is found from any subfolder."""
    return {key: str(folder / value) if key in PATH_KEYS else value for key, value in values.items()}
