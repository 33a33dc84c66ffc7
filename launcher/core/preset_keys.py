"""Every key `--set` takes, with its value in a resolved preset and what the schema accepts for it.

`launcher presets show NAME --keys` prints these rows. They are read off the schema (launcher/core/schema.py)
and the resolved preset, so they cannot drift from what `--set` really accepts: the types, the bounds
(pydantic's annotated-types constraints), the choices of a Literal, and each field's description. Entries of a
list of named tables (dataset.videos) are shown by name, which `--set` takes in place of the index.
"""

from __future__ import annotations

import json
import types
import typing
from dataclasses import dataclass

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from launcher.core.schema import Preset

# Keys the plan chooses to fit resources.gpu_memory_gb when the preset leaves them unset (launcher/core/fit.py).
FITTED = ("model.fp8_base", "train.blocks_to_swap", "train.gradient_checkpointing_cpu_offload")
BOUNDS = ((at.Gt, "gt", ">"), (at.Ge, "ge", ">="), (at.Lt, "lt", "<"), (at.Le, "le", "<="))


@dataclass(frozen=True)
class Key:
    key: str  # dotted, as `--set` takes it
    value: str  # as `--set` would write it
    accepts: str  # the type, bounds or choices, and the field's description


def settable_keys(preset: Preset) -> list[Key]:
    """One row per leaf key of `preset`, in the schema's order."""
    return list(_walk(preset, ""))


def _walk(model: BaseModel, prefix: str) -> typing.Iterator[Key]:
    for name, field in type(model).model_fields.items():
        key, value = prefix + name, getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _walk(value, key + ".")
        elif value and isinstance(value, list) and all(isinstance(v, BaseModel) for v in value):
            named = all(hasattr(v, "name") for v in value)
            for index, entry in enumerate(value):
                yield from _walk(entry, f"{key}.{entry.name if named else index}.")
        else:
            yield Key(key, _shown(key, value), _accepts(field))


def _shown(key: str, value) -> str:
    if value is None:
        return "auto (chosen to fit the GPU)" if key in FITTED else "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return json.dumps([v.model_dump(mode="json", exclude_none=True) if isinstance(v, BaseModel) else v
                           for v in value], separators=(",", ":"))
    return str(value)


def _accepts(field: FieldInfo) -> str:
    text = describe(field.annotation, field.metadata)
    return f"{text}; {field.description}" if field.description else text


def describe(annotation, metadata=()) -> str:
    """What a value of `annotation` may be, in words: `int > 0, <= 4096, multiple of 16`, `one of a, b`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return describe(args[0], [*metadata, *args[1:]])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        text = " or ".join(describe(m, metadata) for m in members)
        return text + " or none" if type(None) in args else text
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        items = {describe(a) for a in args}
        return f"{len(args)} x {items.pop()}" if len(items) == 1 else "(" + ", ".join(describe(a) for a in args) + ")"
    if origin is list:
        item, _, bounds = describe(args[0]).partition(", ") if "(" not in describe(args[0]) else \
            (describe(args[0]), "", "")
        items = _plural(item) + (f" ({bounds})" if bounds else "")
        return f"list of {items}" + "".join(f", {c}" for c in _bounds(metadata, "items"))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"a table ({', '.join(annotation.model_fields)})"
    name = {bool: "true or false", int: "int", float: "number", str: "text"}.get(annotation, str(annotation))
    return ", ".join([name, *_bounds(metadata, "characters")])


def _plural(text: str) -> str:
    for one, many in (("a table", "tables"), ("int", "ints"), ("number", "numbers"), ("text", "texts")):
        if text.startswith(one):
            return many + text[len(one):]
    return text


def _bounds(metadata, unit: str) -> list[str]:
    out = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            out += _bounds(item.metadata, unit)
        for kind, attr, symbol in BOUNDS:
            if isinstance(item, kind):
                out.append(f"{symbol} {getattr(item, attr)}")
        if isinstance(item, at.MultipleOf):
            out.append(f"multiple of {item.multiple_of}")
        if isinstance(item, at.MinLen) and item.min_length:
            out.append("not empty" if item.min_length == 1 else f"at least {item.min_length} {unit}")
        if isinstance(item, at.MaxLen):
            out.append(f"at most {item.max_length} {unit}")
        if getattr(item, "pattern", None):
            out.append(f"matching {item.pattern}")
    return out
