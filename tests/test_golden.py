"""Golden plans: every preset x expert against the example dataset, pinned byte for byte, a 24 GB and a
48 GB variant of each family (block swap, fp8 and activation offload chosen to fit; launcher/core/fit.py), and a
2-GPU data-parallel variant (accelerate --num_processes 2 --multi_gpu).

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


# Data parallel on 2 GPUs: the Wan 2.2 expert with the larger LoRA at its preset's 80 GB class.
MULTI_GPU_VARIANTS = [("wan22-t2v-lightning", "low", 2)]


def golden_name(name: str, expert: str | None, gb: int | None = None, gpus: int = 1) -> str:
    parts = [name, expert, f"{gb}gb" if gb else None, f"{gpus}gpu" if gpus > 1 else None]
    return "--".join(p for p in parts if p) + ".json"


def test_twelve_trainings_and_the_gpu_variants_are_pinned():
    assert len(combinations()) == 12
    assert sorted(p.name for p in GOLDEN.glob("*.json")) == sorted(
        [golden_name(name, expert) for name, expert in combinations()] +
        [golden_name(*variant) for variant in GPU_VARIANTS] +
        [golden_name(name, expert, None, gpus) for name, expert, gpus in MULTI_GPU_VARIANTS])


CASES = ([(n, e, None, 1) for n, e in combinations()] + [(*v, 1) for v in GPU_VARIANTS] +
         [(n, e, None, g) for n, e, g in MULTI_GPU_VARIANTS])


@pytest.mark.parametrize("name, expert, gb, gpus", CASES)
def test_plan_matches_golden(name, expert, gb, gpus):
    overrides = [f"resources.gpu_memory_gb={gb}"] * bool(gb) + [f"resources.gpus={gpus}"] * (gpus > 1)
    preset = load_preset(name, overrides).preset
    plan = make_plan(preset, expert, scan_dataset(EXAMPLE_DATASET), "golden")
    assert plan_problems(plan, preset) == []
    text = json.dumps(plan.to_json(), indent=2) + "\n"
    golden = GOLDEN / golden_name(name, expert, gb, gpus)
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.read_text() == text, f"plan changed: review and run `make golden` if intended ({golden.name})"
