"""The musubi-tuner command-line contract (v0.3.4, commit 30c658c4f4b0) as data, and an argv checker.

The JSON beside this module was produced by introspecting musubi-tuner's real argparse parsers; it is
copied here unchanged. Every argv a plan produces is checked against it, so a flag that does not exist,
a value of the wrong type or an invalid choice fails at `--dry-run` and in tests, never hours into a run.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources

CONTRACT_FILE = "musubi-tuner-30c658c4f4b0.json"
CONTRACT_VERSION = "musubi-tuner-0.3.4-30c658c4"


@dataclass(frozen=True)
class Option:
    flag: str
    type: str | None
    choices: tuple[str, ...] | None
    nargs: object
    action: str
    required: bool

    @property
    def takes_values(self) -> bool:
        return self.action not in ("store_true", "store_false", "help", "count")


@functools.cache
def load() -> dict:
    """The raw contract document."""
    text = resources.files(__name__).joinpath(CONTRACT_FILE).read_text(encoding="utf-8")
    return json.loads(text)


def musubi_commit() -> str:
    return load()["commit"]


def task_info(task: str) -> dict:
    """Facts about one `--task` value: Wan version, I2V, CLIP, layer count, default boundary."""
    return load()["wan_tasks"][task]


@functools.cache
def options(script: str) -> dict[str, Option]:
    """Every option string of one script, mapped to its description."""
    result: dict[str, Option] = {}
    for raw in load()["scripts"][script]["options"]:
        choices = tuple(str(c) for c in raw["choices"]) if raw["choices"] else None
        for flag in raw["option_strings"]:
            result[flag] = Option(flag, raw["type"], choices, raw["nargs"], raw["action"], raw["required"])
    return result


def scripts() -> tuple[str, ...]:
    return tuple(load()["scripts"])


def _type_error(option: Option, value: str) -> str | None:
    """Mimics argparse's conversion of one value: None when it would be accepted."""
    converters = {"int": int, "float": float}
    if option.type in converters:
        try:
            converters[option.type](value)
        except ValueError:
            return f"{option.flag} expects {option.type}, got {value!r}"
    if option.type == "int_or_float":
        try:
            float(value)
        except ValueError:
            return f"{option.flag} expects a number, got {value!r}"
    if option.choices and value not in option.choices:
        return f"{option.flag} got {value!r}, expected one of {', '.join(option.choices)}"
    return None


def _split_flags(args: list[str]) -> list[tuple[str, list[str]]]:
    groups: list[tuple[str, list[str]]] = []
    for arg in args:
        if arg.startswith("--") or (arg.startswith("-") and len(arg) == 2 and not arg[1].isdigit()):
            groups.append((arg, []))
        elif groups:
            groups[-1][1].append(arg)
        else:
            groups.append(("", [arg]))
    return groups


def _arity_error(option: Option, values: list[str]) -> str | None:
    if not option.takes_values:
        return f"{option.flag} takes no value, got {values}" if values else None
    if option.nargs in ("*",):
        return None
    if option.nargs == "+":
        return None if values else f"{option.flag} needs at least one value"
    expected = 1 if option.nargs is None else int(option.nargs)
    if len(values) != expected:
        return f"{option.flag} needs {expected} value(s), got {len(values)}"
    return None


def check_args(script: str, args: list[str]) -> list[str]:
    """Problems with `args` (everything after the script path) for `script`; empty when valid."""
    known = options(script)
    problems: list[str] = []
    seen: set[str] = set()
    for flag, values in _split_flags(args):
        option = known.get(flag)
        if option is None:
            problems.append(f"{script}: unknown argument {flag or values[0]!r}")
            continue
        if flag in seen:
            problems.append(f"{script}: {flag} given twice")
        seen.add(flag)
        problem = _arity_error(option, values)
        problems.extend([f"{script}: {problem}"] if problem else [])
        for value in values if option.takes_values else []:
            problem = _type_error(option, value)
            problems.extend([f"{script}: {problem}"] if problem else [])
    for flag, option in known.items():
        if option.required and flag not in seen and flag.startswith("--"):
            problems.append(f"{script}: required argument {flag} missing")
    return problems
