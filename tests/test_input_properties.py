"""Properties of the input mechanisms: every number the schema takes is finite and bounded, the path helpers
keep names inside their folder, and each program has one error boundary that classifies input errors
without hiding bugs."""

from __future__ import annotations

import json
import math
import typing
from pathlib import Path

import annotated_types
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from launcher.cli.main import main as launcher_main
from launcher.core import presets as preset_module
from launcher.core.errors import UserError
from launcher.core.inputs import SAFE_NAME, finite_number, safe_name
from launcher.core.presets import load_preset
from launcher.core.schema import Preset

# --- the schema's numbers ---------------------------------------------------------------------------------


def _numeric_fields(model: type[BaseModel], prefix: str = ""):
    """(dotted path, number type, bounds) of every int/float field, walking nested models and list items."""
    for name, info in model.model_fields.items():
        annotation, metadata = info.annotation, list(info.metadata)
        yield from _walk(f"{prefix}{name}", annotation, metadata)


def _walk(path: str, annotation, metadata):
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        yield from _walk(path, args[0], metadata + list(args[1:]))
    elif origin in (typing.Union, __import__("types").UnionType):
        for arg in args:
            if arg is not type(None):
                yield from _walk(path, arg, metadata)
    elif origin in (list, tuple):
        for index, arg in enumerate(a for a in args if a is not Ellipsis):
            yield from _walk(f"{path}.{index}", arg, [])
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from _numeric_fields(annotation, f"{path}.")
    elif annotation in (int, float):
        yield path, annotation, _bounds(metadata)


def _bounds(metadata) -> tuple[float, float]:
    low, high = -math.inf, math.inf
    flat = [m for item in metadata for m in ([item, *item.metadata] if isinstance(item, FieldInfo) else [item])]
    for item in flat:
        for attr in ("ge", "gt"):
            if isinstance(getattr(item, attr, None), int | float):
                low = getattr(item, attr)
        for attr in ("le", "lt"):
            if isinstance(getattr(item, attr, None), int | float):
                high = getattr(item, attr)
        if isinstance(item, annotated_types.Interval):
            low = item.ge if item.ge is not None else item.gt if item.gt is not None else low
            high = item.le if item.le is not None else item.lt if item.lt is not None else high
    return low, high


NUMERIC = list(_numeric_fields(Preset))


def test_the_walk_finds_the_numbers():
    paths = {path for path, _, _ in NUMERIC}
    assert {"train.learning_rate", "train.seed", "experts.high.lightning.strength", "resources.time_limit_hours",
            "dataset.videos.0.target_frames.0", "dataset.images.resolution.1"} <= paths


@pytest.mark.parametrize("path, kind, bounds", NUMERIC, ids=[n[0] for n in NUMERIC])
def test_every_number_has_a_lower_and_an_upper_bound(path, kind, bounds):
    low, high = bounds
    assert math.isfinite(low) and math.isfinite(high), f"{path} ({kind.__name__}) is unbounded: {bounds}"


def _override(path: str, text: str) -> tuple[str, str, str]:
    """(preset, `--set` key, value) that puts `text` into the field at `path`."""
    preset = "wan22-t2v-lightning" if path.startswith("experts.") else "wan21-t2v-14b"
    parent, _, last = path.rpartition(".")
    if last.isdigit():  # an item of resolution or target_frames: set the whole field
        return preset, parent, f"{text},{text}" if parent.endswith("resolution") else text
    return preset, path, text


NUMBERS = st.one_of(st.sampled_from(["inf", "-inf", "nan", "1e400", "-0", "1e-400", str(2**64), str(-(2**63))]),
                    st.floats(allow_nan=True, allow_infinity=True), st.integers(min_value=-(2**70), max_value=2**70))


@pytest.mark.parametrize("field", NUMERIC, ids=[n[0] for n in NUMERIC])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(value=NUMBERS)
def test_a_number_is_accepted_only_finite_and_within_its_bounds(field, value):
    path, kind, (low, high) = field
    name, key, text = _override(path, repr(value) if isinstance(value, float) else str(value))
    try:
        preset = load_preset(name, [f"{key}={text}"]).preset
    except UserError as exc:
        assert len(exc.problems) >= 1 and all("\n" not in p for p in exc.problems)
        return
    node = json.loads(preset.model_dump_json())
    for part in key.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    got = node[0] if isinstance(node, list) else node
    assert isinstance(got, int | float) and math.isfinite(got) and low <= got <= high, (key, text, got)


# --- names and numbers outside the schema --------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(st.text(max_size=120))
def test_a_safe_name_is_one_segment_inside_its_folder(name):
    try:
        safe_name(name, "name")
    except UserError as exc:
        assert len(exc.problems) == 1 and "\n" not in exc.problems[0]
        return
    root = Path("/srv/runs")
    joined = (root / name).resolve()
    assert joined.parent == root and joined.name == name and name not in (".", "..")
    assert name.isascii() and name.isprintable() and "/" not in name and "\\" not in name


@given(st.sampled_from(["..", ".", "", "a/b", "../x", "x/..", "\x00", "a\nb", "-rf", ".hidden", "é", "a" * 101]))
def test_names_that_must_not_pass(name):
    assert not SAFE_NAME.fullmatch(name)


@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=20)))
def test_finite_number_accepts_only_finite_numbers_in_range(text):
    try:
        value = finite_number("X", text, 0, 720, "hours", "12")
    except UserError as exc:
        assert exc.problems[0].startswith("X=") and "\n" not in exc.problems[0]
        return
    assert math.isfinite(value) and 0 < value <= 720


def test_pydantic_alone_would_take_inf():
    """Why the schema sets allow_inf_nan=False: a bare bounded float field accepts infinity below its le."""
    class Loose(BaseModel):
        x: float = 0.0

    assert Loose(x=float("inf")).x == math.inf
    with pytest.raises(ValidationError):
        Preset.model_validate({"train": {"learning_rate": float("inf")}})


# --- one error boundary per program ----------------------------------------------------------------------------

def _broken_read(*args, **kwargs):
    raise PermissionError(13, "Permission denied", "/home/you/presets/mine.toml")


def test_the_launcher_turns_an_input_os_error_into_one_line(monkeypatch, capsys):
    monkeypatch.setattr(preset_module, "read_source", _broken_read)
    code = launcher_main(["presets", "show", "whatever"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: /home/you/presets/mine.toml: permission denied") and "--debug" in err


def test_launcher_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setattr(preset_module, "read_source", _broken_read)
    monkeypatch.delenv("LORA_GYM_DEBUG", raising=False)
    with pytest.raises(PermissionError):
        launcher_main(["--debug", "presets", "show", "whatever"])


def test_a_bug_is_not_dressed_as_bad_input(monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("a LoRA Gym bug")

    monkeypatch.setattr(preset_module, "read_source", bug)
    with pytest.raises(KeyError):
        launcher_main(["presets", "show", "whatever"])
