"""`presets show --keys` lists exactly the keys `--set` takes, and `--set` takes a dataset.videos entry by name."""

from __future__ import annotations

import re

import pytest

from launcher.cli.main import main
from launcher.core.errors import UserError
from launcher.core.preset_keys import settable_keys
from launcher.core.presets import load_preset, preset_names


def keys_of(capsys, name: str, *args: str) -> dict[str, tuple[str, str]]:
    assert main(["presets", "show", name, "--keys", *args]) == 0
    rows = [re.split(r"\s{2,}", line, maxsplit=2) for line in capsys.readouterr().out.splitlines()[1:-1]]
    return {key: (value, accepts) for key, value, accepts in rows}


def leaves(data, prefix: str = "") -> set[str]:
    """Dotted keys of the leaves of a preset's data; dataset.videos entries by name."""
    if isinstance(data, dict):
        return {k for key, value in data.items() for k in leaves(value, f"{prefix}{key}.")}
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        return {k for i, v in enumerate(data) for k in leaves(v, f"{prefix}{v.get('name', i)}.")}
    return {prefix.rstrip(".")}


@pytest.mark.parametrize("name", preset_names())
def test_every_key_shown_is_set_back_to_the_same_preset(name):
    preset = load_preset(name).preset
    rows = settable_keys(preset)
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys)) and set(keys) == leaves(preset.model_dump(mode="json"))  # Wan 2.1's experts: 1
    overrides = [f"{r.key}={'none' if r.value.startswith('auto') else r.value}" for r in rows]
    assert load_preset(name, overrides).preset == preset


@pytest.mark.parametrize("name", ["wan22-t2v-lightning", "wan21-t2v-1.3b"])
def test_every_upper_bound_shown_is_the_schemas(name):
    rows = [r for r in settable_keys(load_preset(name).preset) if re.fullmatch(r"int, .*<= \d+.*", r.accepts)]
    assert len(rows) > 10
    for row in rows:
        high = int(re.search(r"<= (\d+)", row.accepts)[1])
        multiple = int(re.search(r"multiple of (\d+)", row.accepts)[1]) if "multiple of" in row.accepts else 1
        with pytest.raises(UserError):
            load_preset(name, [f"{row.key}={high + multiple}"])


def test_the_cli_shows_values_after_overrides_with_fitted_keys_marked(capsys):
    keys = keys_of(capsys, "wan21-t2v-14b", "--set", "dataset.videos.uniform.resolution=640x368")
    assert keys["dataset.videos.uniform.resolution"][0] == "[640,368]"
    assert keys["train.blocks_to_swap"][0].startswith("auto")
    assert keys["train.learning_rate"][1].startswith("number, > 0")
    assert keys["model.task"][1].startswith("one of t2v-A14B, ") and "multiple of 16" in keys["samples.width"][1]


def test_an_entry_goes_by_its_name_or_its_index():
    by_name = load_preset("wan21-t2v-14b", ["dataset.videos.uniform.resolution=640x368"]).preset
    by_index = load_preset("wan21-t2v-14b", ["dataset.videos.1.resolution=640x368"]).preset
    assert by_name == by_index and by_name.dataset.videos[1].resolution == (640, 368)
    renamed = load_preset("wan21-t2v-14b", ["dataset.videos.0.name=short", "dataset.videos.short.num_repeats=3"])
    assert renamed.preset.dataset.videos[0].num_repeats == 3  # a name is looked up as the overrides so far left it


def test_a_name_no_entry_has_is_one_error_naming_the_entries(capsys):
    code = main(["presets", "show", "wan21-t2v-14b", "--set", "dataset.videos.unifrom.num_repeats=2"])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err == ("error: dataset.videos.unifrom.num_repeats: no dataset.videos entry is named 'unifrom' (did you "
                   "mean 'uniform'?): use one of head, uniform or an index from 0\n")
