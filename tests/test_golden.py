"""Golden plans: every preset x expert against the example dataset, pinned byte for byte.

Regenerate after an intended change with `make golden` (UPDATE_GOLDEN=1) and review the diff.
"""

from __future__ import annotations

import json
import os

import pytest
from conftest import EXAMPLE_DATASET, ROOT

from launcher.core.checks import plan_problems
from launcher.core.dataset import scan_dataset
from launcher.core.plan import make_plan
from launcher.core.presets import load_preset, preset_names

GOLDEN = ROOT / "tests" / "golden"


def combinations() -> list[tuple[str, str | None]]:
    combos = []
    for name in preset_names():
        experts = ("high", "low") if load_preset(name).preset.experts else (None,)
        combos += [(name, expert) for expert in experts]
    return combos


def test_twelve_trainings_are_pinned():
    assert len(combinations()) == 12
    assert sorted(p.name for p in GOLDEN.glob("*.json")) == sorted(
        f"{name}{'--' + expert if expert else ''}.json" for name, expert in combinations())


@pytest.mark.parametrize("name, expert", combinations())
def test_plan_matches_golden(name, expert):
    preset = load_preset(name).preset
    plan = make_plan(preset, expert, scan_dataset(EXAMPLE_DATASET), "golden")
    assert plan_problems(plan, preset) == []
    text = json.dumps(plan.to_json(), indent=2) + "\n"
    golden = GOLDEN / f"{name}{'--' + expert if expert else ''}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.read_text() == text, f"plan changed: review and run `make golden` if intended ({golden.name})"
