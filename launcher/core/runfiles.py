"""The JSON files LoRA Gym reads back: a run folder's run.json and progress.json, and the run registry's records.

Whoever reads one reads it here: `read(path)` for a file on this machine, `parse(data, where)` for bytes from a
platform's volume. Each file kind has a small shape (below): the fields its readers use, their types, which
must be there. A file that is not UTF-8 JSON, is not an object, or has a field of the wrong type or missing is
refused with one `DamagedRunFile` line naming the file, the field and what to do, instead of a traceback deep
in the report, the status table or a resumed run. Fields not listed are allowed (a newer version may add some).
Standard library only: the entrypoint reads an earlier run.json with it when it continues a run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath

from launcher.core.errors import UserError

EXPERT_FOLDERS = ("high", "low")  # Modal's both-experts layout: <run id>/<expert>/run.json


class DamagedRunFile(UserError):
    """A run file LoRA Gym wrote, no longer in the shape it wrote it: exit code 2, one `error:` line."""


# --- the shape language: a handful of types, enough for these files -------------------------------------

class Scalar:
    """One JSON value that is not an object or a list; `fits` says whether a value is one."""

    name = "a value"

    def fits(self, value) -> bool:
        return True


class Number(Scalar):
    """A finite int or float (not true/false: JSON's booleans are not numbers)."""

    name = "a finite number"

    def fits(self, value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class Whole(Number):
    name = "a whole number"

    def fits(self, value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)


class Text(Scalar):
    name = "text"

    def fits(self, value) -> bool:
        return isinstance(value, str)


class Flag(Scalar):
    name = "true or false"

    def fits(self, value) -> bool:
        return isinstance(value, bool)


class Time(Scalar):
    """An ISO 8601 time with its time zone (`launcher status` subtracts it from now in UTC)."""

    name = "an ISO 8601 time with a time zone"

    def fits(self, value) -> bool:
        try:
            return isinstance(value, str) and datetime.fromisoformat(value).tzinfo is not None
        except ValueError:
            return False


@dataclass(frozen=True)
class Maybe:
    shape: object


@dataclass(frozen=True)
class ListOf:
    item: object


@dataclass(frozen=True)
class MapOf:
    value: object


@dataclass(frozen=True)
class Pair:
    first: object
    second: object


@dataclass(frozen=True)
class Obj:
    required: dict = field(default_factory=dict)
    optional: dict = field(default_factory=dict)


NUMBER, WHOLE, TEXT, FLAG, TIME = Number(), Whole(), Text(), Flag(), Time()


def _kind(value) -> str:
    """What a JSON value is, in words, for the error line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number" if math.isfinite(value) else f"{value} (not finite)"
    if isinstance(value, str):
        return f"text {value[:30]!r}" if len(value) <= 30 else "text"
    return "a list" if isinstance(value, list) else "an object"


def _expected(shape) -> str:
    if isinstance(shape, Maybe):
        return f"{_expected(shape.shape)} or null"
    if isinstance(shape, ListOf | Pair):
        return "a list" if isinstance(shape, ListOf) else "a pair of numbers"
    return "an object" if isinstance(shape, Obj | MapOf) else shape.name


def _at(path: str, key) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)


def defect(value, shape, path: str = "") -> tuple[str, str] | None:
    """The first (field, what is wrong) of `value` against `shape`, or None when it fits."""
    if isinstance(shape, Maybe):
        return None if value is None else defect(value, shape.shape, path)
    wrong = (path or "the file", f"is {_kind(value)}, not {_expected(shape)}")
    if isinstance(shape, Obj | MapOf):
        if not isinstance(value, dict):
            return wrong
        if isinstance(shape, MapOf):
            return next(filter(None, (defect(v, shape.value, _at(path, k)) for k, v in value.items())), None)
        missing = [k for k in shape.required if k not in value]
        if missing:
            return _at(path, missing[0]), "is missing"
        fields = shape.required | shape.optional
        return next(filter(None, (defect(value[k], s, _at(path, k)) for k, s in fields.items() if k in value)),
                    None)
    if isinstance(shape, ListOf):
        if not isinstance(value, list):
            return wrong
        return next(filter(None, (defect(v, shape.item, _at(path, i)) for i, v in enumerate(value))), None)
    if isinstance(shape, Pair):
        if not isinstance(value, list) or len(value) != 2:
            return wrong
        return defect(value[0], shape.first, _at(path, 0)) or defect(value[1], shape.second, _at(path, 1))
    return None if shape.fits(value) else wrong


# --- the files' shapes: what entrypoints/manifest.py, rundir.py, progress.py and launcher/runs.py write ----

ANY_OBJECT = Obj()
STEP = Obj({"name": TEXT, "status": TEXT}, {"argv": ListOf(TEXT), "exit_code": Maybe(WHOLE),
                                             "started_at": Maybe(TEXT), "ended_at": Maybe(TEXT),
                                             "reason": Maybe(TEXT)})
SAMPLES = Obj({"status": TEXT}, {
    "note": Maybe(TEXT), "failed_step": Maybe(TEXT), "reason": Maybe(TEXT), "epochs": ListOf(WHOLE),
    "prompts": ListOf(Obj({"text": TEXT})), "sheets": ListOf(Obj({"prompt": WHOLE, "path": TEXT})),
    "videos": ListOf(Obj({"prompt": WHOLE, "path": TEXT, "epoch": WHOLE}))})
LORA_CHECK = Obj({"status": TEXT, "dit": TEXT, "output_name": TEXT,
                  "want": Obj({"network_dim": WHOLE, "network_alpha": NUMBER, "network_module": TEXT},
                              {"metadata": MapOf(TEXT)})},
                 {"files": ListOf(Obj({"path": TEXT, "modules": WHOLE, "keys": WHOLE, "problems": ListOf(TEXT)})),
                  "reason": Maybe(TEXT), "dit_checked": FLAG, "dit_read": Maybe(TEXT)})
# Required: what a reader cannot do without. run.json's top-level fields are optional (its readers show what is
# there: an earlier version, or a run that ended early, wrote fewer); inside its records, most are required.
RUN_JSON = Obj({}, {
    "run_id": TEXT, "status": TEXT,
    "exit_code": Maybe(WHOLE), "expert": Maybe(TEXT), "stage": Maybe(TEXT), "reason": Maybe(TEXT),
    "plan_sha256": TEXT, "started_at": Maybe(TEXT), "ended_at": Maybe(TEXT),
    "preset": Obj({}, {"name": Maybe(TEXT), "origin": Maybe(TEXT), "sha256": TEXT, "overrides": ListOf(TEXT)}),
    "settings": Obj({}, {"train": ANY_OBJECT, "model": ANY_OBJECT}), "image_labels": Maybe(MapOf(TEXT)),
    "dataset": Obj({}, {"counts": MapOf(WHOLE), "dirs": ListOf(Obj({"path": TEXT, "kind": TEXT, "files": WHOLE,
                                                                   "sha256": TEXT}))}),
    "steps": ListOf(STEP), "training": MapOf(Obj({}, {"epochs": WHOLE, "total_steps": WHOLE})),
    "restarts": ListOf(ANY_OBJECT), "outputs": ListOf(Obj({"path": TEXT, "size": WHOLE, "sha256": TEXT})),
    "failure": Obj({}, {"hint": Maybe(TEXT), "step": TEXT, "kind": TEXT}), "samples": Maybe(SAMPLES),
    "lora_check": MapOf(LORA_CHECK)})
CURRENT = {"epoch": Maybe(WHOLE), "epochs": Maybe(WHOLE), "step": Maybe(WHOLE), "steps": Maybe(WHOLE),
           "it_per_s": Maybe(NUMBER), "loss_avg": Maybe(NUMBER), "eta_s": Maybe(WHOLE), "elapsed_s": Maybe(WHOLE),
           "checkpoint": Maybe(TEXT)}
PROGRESS_JSON = Obj({"status": TEXT}, {  # launcher/core/progress.py's status line cannot do without it
    "run_id": TEXT, "stage": Maybe(TEXT), "updated_at": Maybe(TIME), "current": Obj({}, CURRENT),
    "trainings": MapOf(Obj({}, CURRENT | {"history": ListOf(Pair(NUMBER, NUMBER))}))})
RECORD = Obj({"run_id": TEXT, "backend": TEXT}, {"kind": TEXT, "preset": Maybe(TEXT), "expert": Maybe(TEXT),
                                                 "created_at": TEXT, "output": TEXT, "runs": ListOf(ANY_OBJECT),
                                                 "caches": ListOf(TEXT)})
SHAPES = {"run.json": RUN_JSON, "progress.json": PROGRESS_JSON}


# --- reading -------------------------------------------------------------------------------------------

def run_id_of(where: str) -> str:
    """The run a run file belongs to, from where it lies: `<run id>/run.json` or `<run id>/<expert>/run.json`."""
    folder = PurePosixPath(str(where).replace("\\", "/")).parent
    return folder.parent.name if folder.name in EXPERT_FOLDERS else folder.name


def repull(where: str) -> str:
    """The default fix: a run folder is the platform's copy, pulled again."""
    return f"the run folder looks damaged: pull it again with `launcher pull {run_id_of(where) or 'RUN'}`"


def _decoded(data: bytes | str, where: str, fix: str):
    try:
        # UTF-8, as written; json.loads would also guess UTF-16 or 32 from the bytes and parse garbage.
        return json.loads(data.decode("utf-8-sig") if isinstance(data, bytes) else data)
    except UnicodeDecodeError:
        raise DamagedRunFile(f"{where} is not UTF-8 text: {fix}") from None
    except json.JSONDecodeError as exc:
        # The parser stopped at the end, or inside a string that never closed: the file ends too early.
        cut = " (cut short?)" if exc.pos >= len(data.rstrip()) or exc.msg.startswith("Unterminated") else ""
        raise DamagedRunFile(f"{where} is not valid JSON{cut}: {exc.msg} (line {exc.lineno}, column {exc.colno}): "
                             f"{fix}") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise DamagedRunFile(f"{where} is not valid JSON: {str(exc).splitlines()[0][:120]}: {fix}") from None
    except RecursionError:
        raise DamagedRunFile(f"{where} is nested too deeply to be a LoRA Gym file: {fix}") from None


def parse(data: bytes | str, where: str, shape=None, fix: str | None = None) -> dict:
    """The file's content, checked against `shape` (default: by its name, run.json or progress.json)."""
    fix = fix or repull(where)
    value = _decoded(data, where, fix)
    shape = shape or SHAPES[PurePosixPath(str(where)).name]
    found = defect(value, shape)
    if found:
        name, problem = found
        raise DamagedRunFile(f"{where}: {name} {problem}: {fix}")
    return value


def read(path: str | Path, shape=None, fix: str | None = None) -> dict:
    """A run file on this machine, checked; DamagedRunFile when it cannot be read or is not in shape."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DamagedRunFile(f"{path} is a folder, not a file: {fix or repull(str(path))}") from None
    except OSError as exc:
        raise DamagedRunFile(f"{path} cannot be read ({(exc.strerror or type(exc).__name__).lower()}): "
                             f"{fix or repull(str(path))}") from None
    return parse(data, str(path), shape, fix)


def read_if_there(path: str | Path, shape=None, fix: str | None = None) -> dict | None:
    """`read`, or None when there is no such file (yet): a run writes progress.json once its first step starts."""
    return read(path, shape, fix) if Path(path).exists() or Path(path).is_symlink() else None
