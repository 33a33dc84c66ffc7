"""Preset registry (the presets/ directory), loading, `--set` overrides and error reporting.

A preset is named by its file stem in presets/, or given as a path to a user preset file; both go
through the same strict schema. Overrides are applied to the raw data and coerced by the schema, so
`--set train.learning_rate=5e-5` yields a float exactly as if it had been written in the file.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ValidationError

from launcher.core.errors import UserError, closest
from launcher.core.inputs import MAX_NESTING, bracket_depth, existing_file, toml_data, too_deep
from launcher.core.schema import PATTERN_MESSAGES, Preset, cross_checks

REGISTRY_PACKAGE = "launcher.presets_data"
MAX_KEY_DEPTH = 6  # the deepest preset key is dataset.videos.<i>.resolution.<i>


@dataclass(frozen=True)
class LoadedPreset:
    preset: Preset
    origin: str  # the registry name or the path the user gave
    text: str  # the file as written, before overrides
    overrides: tuple[str, ...]

    @property
    def content_hash(self) -> str:
        """sha256 of the resolved settings (file plus overrides), as recorded in run.json."""
        canonical = json.dumps(self.preset.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _registry():
    return resources.files(REGISTRY_PACKAGE)


def preset_names() -> list[str]:
    """Every preset shipped in presets/, sorted: the directory is the registry."""
    return sorted(p.name[: -len(".toml")] for p in _registry().iterdir() if p.name.endswith(".toml"))


def _looks_like_path(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref or Path(ref).is_file()


def read_source(ref: str) -> tuple[str, str]:
    """(origin, text) for a preset name or a path to a preset file."""
    if _looks_like_path(ref):
        path = existing_file(Path(ref), "preset file", "give an existing .toml file or a preset name from "
                             "`launcher presets list`")
        try:
            return str(path), path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"preset file {ref} is not UTF-8 text: save it as UTF-8") from None
    names = preset_names()
    if ref not in names:
        raise UserError(f"unknown preset {ref!r}{closest(ref, names)}: run `launcher presets list` to see them")
    return ref, _registry().joinpath(f"{ref}.toml").read_text(encoding="utf-8")


def parse_toml(text: str, origin: str) -> dict:
    try:
        return toml_data(text, origin)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{origin}: TOML syntax error: {exc}: fix the file and try again") from None


# --- walking the schema by dotted path -------------------------------------------------------------

def _unwrap(annotation):
    """Strip Annotated and Optional so the walk sees the real type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _child(annotation, segment: str):
    """The annotation one step down, or None when `segment` is not a key there."""
    annotation = _unwrap(annotation)
    if _is_model(annotation):
        field = annotation.model_fields.get(segment)
        return None if field is None else field.annotation
    if typing.get_origin(annotation) is list and segment.isascii() and segment.isdigit():
        return typing.get_args(annotation)[0]
    return None


def _keys_at(annotation, prefix: str) -> list[str]:
    annotation = _unwrap(annotation)
    return [f"{prefix}{name}" for name in annotation.model_fields] if _is_model(annotation) else []


def _annotation_at(path: list[str]):
    annotation = Preset
    for depth, segment in enumerate(path):
        child = _child(annotation, segment)
        if child is None:
            dotted = ".".join(path)
            prefix = ".".join(path[:depth]) + ("." if depth else "")
            raise UserError(f"unknown override key {dotted!r}{closest(dotted, _keys_at(annotation, prefix))}: "
                            "see `launcher presets show NAME --keys` for the keys")
        annotation = child
    return annotation


def _allows_none(annotation) -> bool:
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return type(None) in typing.get_args(annotation)


def _coerce_text(annotation, key: str, value: str, current=None):
    """Turn the override's text into raw data; the schema does the real type conversion. `current`: the value
    the override replaces, which shows the form a list takes."""
    if value.lower() in ("none", "null") and _allows_none(annotation):
        return None
    base = _unwrap(annotation)
    if _is_model(base):
        raise UserError(f"{key} is a table: set one of its keys, e.g. {_keys_at(base, key + '.')[0]}=...")
    if typing.get_origin(base) in (list, tuple):
        return _list_value(base, key, value, current)
    return value


# Where a list has a friendlier way in than JSON on the command line.
LIST_HINTS = {"samples.prompts": ", or write one prompt a line in a file and pass --samples FILE"}


def _list_value(annotation, key: str, value: str, current):
    """A list override: JSON (`[960,544]`, `[{"text": "a cat"}]`), or for plain values `960,544` / `960x544`.
    The depth is measured before json.loads, which would recurse once per bracket."""
    item = _unwrap(typing.get_args(annotation)[0])
    tables = _is_model(item)
    if not value.startswith("["):
        if tables:
            raise UserError(f"{key} is a list of tables: write it in JSON, e.g. {key}='{_example(item, current)}'"
                            f"{LIST_HINTS.get(key, '')}")
        parts = [part.strip() for part in value.replace("x", ",").split(",") if part.strip()]
        return _sized(annotation, key, value, parts, current)
    if bracket_depth(value) > MAX_NESTING:
        raise too_deep(f"the value of {key}")
    try:
        data = json.loads(value)
    except json.JSONDecodeError:
        raise UserError(_not_json(key, value, item, current)) from None
    if tables and not (isinstance(data, list) and all(isinstance(d, dict) for d in data)):
        raise UserError(f"{key}: each item is a table of {', '.join(item.model_fields)}, not "
                        f"{_clip(_first_not_table(data))}: write {key}='{_example(item, current, data)}'"
                        f"{LIST_HINTS.get(key, '')}")
    return data


def _sized(annotation, key: str, value: str, parts: list[str], current) -> list[str]:
    """A fixed-size tuple (a resolution) written with too few or too many numbers: say so, not 'item missing'.
    In a --grid, commas separate the values, so each value there is written as 960x544."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and Ellipsis not in args and len(parts) != len(args):
        shape = "x".join(str(v) for v in current) if isinstance(current, list | tuple) and current else "x".join(
            "N" * len(args))
        raise UserError(f"{key} takes {len(args)} numbers, got {_clip(value)}: write it as {shape} (in a --grid, "
                        f"commas separate the values: {shape},...)")
    return parts


def _first_not_table(data):
    return next((d for d in data if not isinstance(d, dict)), data) if isinstance(data, list) else data


def _not_json(key: str, value: str, item, current) -> str:
    """The preset files' TOML (`[{text = "a"}]`) is the likeliest slip: show it converted."""
    try:
        parsed = tomllib.loads(f"v = {value}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return f"{key}: {_clip(value)} is not a JSON list: write it as {_example(item, current)}"
    if set(parsed) == {"v"}:
        return (f"{key}: {_clip(value)} is TOML, but --set (and LORA_GYM_SET) takes JSON: write "
                f"{key}='{_clip(_json(parsed['v']), 160)}'")
    return f"{key}: {_clip(value)} is not one JSON list: write it as {_example(item, current)}"


def _example(item, current, given=None) -> str:
    """A value of the list's own form: the user's scalars as tables when the item has one required field,
    else the value it replaces, else the item's required fields."""
    if _is_model(item):
        required = [name for name, f in item.model_fields.items() if f.is_required()]
        if isinstance(given, list) and len(required) == 1 and given:
            return _clip(_json([g if isinstance(g, dict) else {required[0]: g} for g in given]), 160)
        if isinstance(current, list) and current:
            return _clip(json.dumps(current[:1], separators=(",", ":")), 160)
        return json.dumps([dict.fromkeys(required or list(item.model_fields)[:1], "...")])
    if isinstance(current, list | tuple) and current:
        text = json.dumps(list(current), separators=(",", ":"))
        return f"{text} or {text[1:-1]}"
    return "[1,2] or 1,2"


def _json(value) -> str:
    """JSON to paste: non-ASCII text as typed, unless it holds a character that would break the error line."""
    text = json.dumps(value, ensure_ascii=False)
    return text if text.isprintable() else json.dumps(value)


def _clip(value, limit: int = 60) -> str:
    """The user's value for an error line: bracketed text as typed when it is printable, else repr; shortened."""
    printable = isinstance(value, str) and value.startswith(("[", "{")) and value.isprintable()
    text = value if printable else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _default_at(annotation, segment: str):
    """The schema default of `segment` as raw data, so an override can reach into defaulted tables."""
    field = _unwrap(annotation).model_fields[segment]
    default = field.get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json")
    if isinstance(default, list):
        return [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in default]
    return {} if default is None else default


def _current(raw: dict, path: list[str]):
    """The value at `path` an override would replace (the schema default where the preset has none), or None."""
    node, annotation = raw, Preset
    for segment in path:
        if isinstance(node, list):
            node = node[int(segment)] if int(segment) < len(node) else None
        elif isinstance(node, dict):
            node = node[segment] if node.get(segment) is not None else _default_at(annotation, segment)
        else:
            return None
        annotation = _child(annotation, segment)
    return node


def _step(node, segment: str, annotation, key: str):
    if isinstance(node, list):
        index = int(segment)
        if index >= len(node):
            raise UserError(f"{key}: there are only {len(node)} entries: use an index below {len(node)}")
        return node[index]
    if node.get(segment) is None:
        node[segment] = _default_at(annotation, segment)
    return node[segment]


def _assign(raw: dict, path: list[str], value, key: str) -> None:
    node, annotation = raw, Preset
    for segment in path[:-1]:
        node = _step(node, segment, annotation, key)
        annotation = _child(annotation, segment)
    if isinstance(node, list):
        _step(node, path[-1], annotation, key)  # bounds check
        node[int(path[-1])] = value
    else:
        node[path[-1]] = value


def apply_overrides(raw: dict, overrides: typing.Iterable[str]) -> dict:
    """A copy of `raw` with each `key=value` applied; unknown keys fail with a suggestion."""
    result = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value: write e.g. --set train.learning_rate=5e-5")
        path = key.split(".")
        if len(path) > MAX_KEY_DEPTH or len(key) > 200:
            raise UserError(f"override key {key[:40]!r}... is longer than any preset key: see "
                            "`launcher presets show NAME --keys` for the keys")
        path = _indexed(result, path, key)
        annotation = _annotation_at(path)
        _assign(result, path, _coerce_text(annotation, key, value.strip(), _current(result, path)), key)
    return result


def _named_entries(annotation) -> bool:
    """Whether `annotation` is a list of tables with a `name` (dataset.videos): its entries go by name too."""
    base = _unwrap(annotation)
    item = typing.get_args(base)[0] if typing.get_origin(base) is list else None
    return _is_model(item) and "name" in item.model_fields


def _indexed(raw: dict, path: list[str], key: str) -> list[str]:
    """`path` with a list entry's name in place of its index (dataset.videos.uniform -> dataset.videos.1),
    looked up in `raw` as the overrides so far left it (defaults filled in); a name no entry has fails."""
    node, annotation, result = raw, Preset, []
    for depth, segment in enumerate(path):
        if _named_entries(annotation) and not segment.isdigit():
            names = [entry.get("name") for entry in node if isinstance(entry, dict)] if isinstance(node, list) else []
            if segment not in names:
                where = ".".join(path[:depth])
                raise UserError(f"{key}: no {where} entry is named {segment!r}{closest(segment, names)}: use one of "
                                f"{', '.join(map(str, names)) or '(none)'} or an index from 0")
            segment = str(names.index(segment))
        child = _child(annotation, segment)
        if child is None:  # not a key: _annotation_at says so, with a suggestion
            return result + [segment] + path[depth + 1:]
        node = _peek(node, segment, annotation)
        annotation, result = child, [*result, segment]
    return result


def _peek(node, segment: str, annotation):
    """`node[segment]` without changing anything: the schema default where the preset leaves it out."""
    if isinstance(node, list):
        return node[int(segment)] if int(segment) < len(node) else None
    if isinstance(node, dict):
        return node[segment] if node.get(segment) is not None else _default_at(annotation, segment)
    return None


# --- validation --------------------------------------------------------------------------------------

def _dotted(loc) -> str:
    return ".".join(str(part) for part in loc)


def _describe(error: dict) -> str:
    loc = list(error["loc"])
    if error["type"] == "extra_forbidden":
        parent = _annotation_at([str(p) for p in loc[:-1]]) if loc[:-1] else Preset
        return f"{_dotted(loc)}: unknown key{closest(str(loc[-1]), _keys_at(parent, ''))}"
    if error["type"] == "missing":
        return f"{_dotted(loc)}: required but missing"
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "string_pattern_mismatch":
        message = PATTERN_MESSAGES.get(error.get("ctx", {}).get("pattern"), message)
    return f"{_dotted(loc) or 'preset'}: {message}{_shown_input(error['input'])}"


def _shown_input(value) -> str:
    """` (got 'x')` for a scalar input; nothing for a table, which would put the whole preset on one line."""
    if isinstance(value, dict | list | tuple):
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def validate(raw: dict, origin: str) -> Preset:
    """The preset, or UserError listing every problem with its dotted path."""
    try:
        preset = Preset.model_validate(raw)
    except ValidationError as exc:
        raise UserError(*(f"{origin}: {_describe(e)}" for e in exc.errors())) from None
    problems = cross_checks(preset)
    if problems:
        raise UserError(*(f"{origin}: {path}: {message}" for path, message in problems))
    return preset


def load_preset(ref: str, overrides: typing.Sequence[str] = ()) -> LoadedPreset:
    origin, text = read_source(ref)
    raw = apply_overrides(parse_toml(text, origin), overrides)
    return LoadedPreset(validate(raw, origin), origin, text, tuple(overrides))
