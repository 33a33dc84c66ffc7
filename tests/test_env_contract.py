"""The environment contract table in entrypoints/README.md matches the variables the code reads."""

from __future__ import annotations

import re

import pytest
from conftest import ROOT

from launcher.core.errors import UserError
from lora_gym_entrypoint import env

ROW = re.compile(r"^\| `(LORA_GYM_\w+)` \| (.+?) \| (.+?) \|$", re.M)


def documented() -> dict[str, tuple[str, str]]:
    text = (ROOT / "entrypoints" / "README.md").read_text()
    return {name: (default, meaning) for name, default, meaning in ROW.findall(text)}


def test_readme_table_lists_exactly_the_variables_in_code():
    assert set(documented()) == {v.name for v in env.VARS}


def test_readme_defaults_and_meanings_match_code():
    table = documented()
    for var in env.VARS:
        default, meaning = table[var.name]
        assert default == (f"`{var.default}`" if var.default else "(empty)"), var.name
        assert meaning == var.meaning, var.name


def test_every_variable_is_read_by_the_entrypoint():
    source = (ROOT / "entrypoints" / "env.py").read_text()
    for var in env.VARS:
        assert source.count(f'"{var.name}"') >= 2, f"{var.name} is declared but never read"


def test_settings_from_environment():
    settings = env.read({"LORA_GYM_PRESET": "wan21-t2v-14b", "LORA_GYM_SET": "a=1 'b=two words'",
                         "LORA_GYM_CACHE_DIR": "/c", "LORA_GYM_DRY_RUN": "yes"}, tensorboard=False)
    assert settings.overrides == ("a=1", "b=two words")
    assert settings.paths.cache == "/c" and settings.paths.dataset == "/dataset"
    assert settings.dry_run is True and settings.expert is None and settings.paths.tensorboard is False


@pytest.mark.parametrize("environ, message", [
    ({}, "LORA_GYM_PRESET is not set"),
    ({"LORA_GYM_PRESET": "p", "LORA_GYM_DRY_RUN": "maybe"}, "not a yes/no value"),
    ({"LORA_GYM_PRESET": "p", "LORA_GYM_SET": "a='unclosed"}, "check its quotes"),
])
def test_bad_environment(environ, message):
    with pytest.raises(UserError, match=message):
        env.read(environ, tensorboard=True)
