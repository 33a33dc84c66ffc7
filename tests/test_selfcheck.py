"""The build-time self-check parses every plan with musubi's parsers (here: the contract-built test double)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import FAKES, clean_env

from lora_gym_entrypoint import selfcheck

FAKE_SRC = FAKES / "fake_musubi_tuner" / "src"


@pytest.fixture
def fake_musubi_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE_SRC))
    yield
    for name in [m for m in sys.modules if m.startswith("musubi_tuner")]:
        del sys.modules[name]


@pytest.mark.parametrize("family", ["wan21", "wan22"])
def test_every_plan_of_the_family_parses(family):
    result = subprocess.run([sys.executable, "-m", "lora_gym_entrypoint.selfcheck", "--family", family],
                            env=clean_env(PYTHONPATH=str(FAKE_SRC)), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "every" in result.stdout


def test_a_flag_musubi_does_not_know_fails_the_check(fake_musubi_importable, monkeypatch):
    original = selfcheck.family_plans

    def with_bad_flag(family):
        for label, plan in original(family):
            steps = tuple(replace(s, argv=(*s.argv, "--no_such_flag")) if s.name == "train" else s
                          for s in plan.steps)
            yield label, replace(plan, steps=steps)

    monkeypatch.setattr(selfcheck, "family_plans", with_bad_flag)
    problems = selfcheck.check("wan21")
    assert len(problems) == 4 and all("unrecognized arguments: --no_such_flag" in p for p in problems)


def test_parsers_come_from_the_functions_musubi_main_uses(fake_musubi_importable):
    parser = selfcheck.musubi_parser("wan_cache_latents")
    assert parser.parse_args(["--dataset_config", "d.toml", "--i2v"]).i2v is True
