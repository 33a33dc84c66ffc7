"""Golden plans: every preset x expert against the example dataset, pinned byte for byte, and a 24 GB and a
48 GB variant of each family (block swap, fp8 and activation offload chosen to fit; launcher/core/fit.py).

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


# One preset per family, the expert with the larger LoRA for Wan 2.2, at the two GPU sizes users ask about most.
GPU_VARIANTS = [(name, expert, gb) for name, expert in (("wan21-t2v-14b", None), ("wan22-t2v-lightning", "low"))
                for gb in (24, 48)]


def golden_name(name: str, expert: str | None, gb: int | None = None) -> str:
    return f"{name}{'--' + expert if expert else ''}{f'--{gb}gb' if gb else ''}.json"


def test_twelve_trainings_and_the_gpu_variants_are_pinned():
    assert len(combinations()) == 12
    assert sorted(p.name for p in GOLDEN.glob("*.json")) == sorted(
        [golden_name(name, expert) for name, expert in combinations()] +
        [golden_name(*variant) for variant in GPU_VARIANTS])


@pytest.mark.parametrize("name, expert, gb", [(n, e, None) for n, e in combinations()] + GPU_VARIANTS)
def test_plan_matches_golden(name, expert, gb):
    preset = load_preset(name, [f"resources.gpu_memory_gb={gb}"] if gb else []).preset
    plan = make_plan(preset, expert, scan_dataset(EXAMPLE_DATASET), "golden")
    assert plan_problems(plan, preset) == []
    text = json.dumps(plan.to_json(), indent=2) + "\n"
    golden = GOLDEN / golden_name(name, expert, gb)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.read_text() == text, f"plan changed: review and run `make golden` if intended ({golden.name})"
