"""A sweep as prepared jobs: one Job per training (combination x expert), one cache pass per distinct cache.

Every combination goes through launcher.core.job.prepare, the path `launcher run` takes, so a value the
schema refuses (an unknown key, `nan`, a wrong type) is refused here before anything starts, with the same
message. Trainings whose cache steps write the same marker files share a cache pass: a grid over learning
rates or ranks has one, a grid over a cache setting (a resolution, the fp8 T5) has one per value.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from launcher.core.errors import UserError
from launcher.core.job import Job, prepare
from launcher.core.plan import experts_to_train
from launcher.core.presets import load_preset
from launcher.sweep.grid import Axis, combinations


@dataclass(frozen=True)
class Training:
    """One run of the sweep: an ordinary run id, its grid values, and its job (a single expert at most)."""

    run_id: str
    grid: tuple[str, ...]
    job: Job
    cache: str  # run id of the cache pass it waits for

    @property
    def expert(self) -> str | None:
        return self.job.plan.expert


@dataclass(frozen=True)
class CachePass:
    run_id: str
    job: Job  # planned with the sweep's --expert, so `both` caches for both experts at once


@dataclass(frozen=True)
class Sweep:
    sweep_id: str
    preset: str
    expert: str | None
    base: tuple[str, ...]  # --set overrides shared by every run
    axes: tuple[Axis, ...]
    caches: tuple[CachePass, ...]
    trainings: tuple[Training, ...]


def new_sweep_id(preset: str, now: datetime) -> str:
    return f"{preset}-sweep-{now.strftime('%Y%m%d-%H%M%S')}"


def cache_key(job: Job) -> tuple[str, ...]:
    """What identifies a cache pass: the markers its cache and merge steps leave (keyed by content)."""
    return tuple(sorted(m for step in job.plan.steps for m in step.markers))


def prepare_sweep(preset_ref: str, expert: str | None, base: Sequence[str], dataset_dir: str, axes: Sequence[Axis],
                  yes: bool = False, sweep_id: str | None = None, now: datetime | None = None) -> Sweep:
    """Plan every run of the sweep; the first problem is a UserError before anything is started."""
    combos = combinations(axes, yes)
    preset = load_preset(preset_ref, base).preset  # a bad --set fails once, not once per combination
    # Every value through the schema before the dataset is read (and its hashes cached).
    _refuse_equal_values(axes, combos, [load_preset(preset_ref, (*base, *combo)).preset for combo in combos])
    experts = experts_to_train(preset, expert)
    sweep_id = sweep_id or new_sweep_id(preset.name, now or datetime.now(UTC))
    groups: dict[tuple[str, ...], CachePass] = {}
    trainings, wholes = [], []
    for n, combo in enumerate(combos, 1):
        overrides, run_id = (*base, *combo), f"{sweep_id}-{n:02d}"
        whole = prepare(preset_ref, expert, overrides, dataset_dir, run_id=run_id)
        wholes.append(whole)
        key = cache_key(whole)
        if key not in groups:  # the first run with these caches plans its pass, under its own run id
            cache_id = f"{sweep_id}-cache{len(groups) + 1}"
            groups[key] = CachePass(cache_id, prepare(preset_ref, expert, overrides, dataset_dir, run_id=cache_id))
        for one in experts:
            unit_id = f"{run_id}-{one}" if expert == "both" else run_id
            job = whole if expert != "both" else prepare(preset_ref, one, overrides, dataset_dir, run_id=unit_id)
            trainings.append(Training(unit_id, tuple(combo), job, groups[key].run_id))
    _refuse_equal_runs(combos, wholes, [e for e in experts if e])
    return Sweep(sweep_id, preset.name, expert, tuple(base), tuple(axes), tuple(groups.values()), tuple(trainings))


def _value_at(data, key: str):
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data.get(part) if isinstance(data, dict) else None
    return data


def _refuse_equal_values(axes: Sequence[Axis], combos: Sequence[tuple[str, ...]], presets: Sequence) -> None:
    """Grid values are compared as the schema reads them, not as typed: 1e-4 and 0.0001, 16 and 016, true and
    True are one value, and a grid with both would train the same run twice."""
    dumps = [p.model_dump(mode="json") for p in presets]
    for index, axis in enumerate(axes):
        typed_as: dict[str, str] = {}
        for combo, dump in zip(combos, dumps, strict=True):
            typed = combo[index].partition("=")[2]
            value = json.dumps(_value_at(dump, axis.key), sort_keys=True)
            if typed_as.setdefault(value, typed) != typed:
                raise UserError(f"--grid {axis.key} lists {typed_as[value]} and {typed}, which are one value "
                                f"({value}): each combination would run twice; list it once")


def _fingerprint(job: Job) -> str:
    """What a run does, whatever it is called: its plan with its own run id masked."""
    return json.dumps(job.plan.to_json(), sort_keys=True, default=str).replace(job.plan.run_id, "<run>")


def _refuse_equal_runs(combos: Sequence[tuple[str, ...]], wholes: Sequence[Job], trained: list[str]) -> None:
    """Two combinations whose plans are the same differ only in keys that no step reads (e.g. an expert this
    sweep does not train): refused, rather than renting a GPU twice for one run."""
    seen: dict[str, tuple[str, ...]] = {}
    for combo, whole in zip(combos, wholes, strict=True):
        first = seen.setdefault(_fingerprint(whole), combo)
        if first == combo:
            continue
        differ = [(a, b) for a, b in zip(first, combo, strict=True) if a != b]
        keys = sorted({a.partition("=")[0] for a, _ in differ})
        untrained = [k for k in keys if k.startswith("experts.") and k.split(".")[1] not in trained]
        why = (f" (only the {' and '.join(trained)}-noise expert is trained: --expert {trained[0]})" if untrained
               else "")
        raise UserError(f"--grid {', '.join(keys)}: {' '.join(a for a, _ in differ)} and "
                        f"{' '.join(b for _, b in differ)} give the same runs: no step of this sweep reads "
                        f"{' or '.join(keys)}{why}; drop it from the grid")


def describe(sweep: Sweep) -> list[str]:
    """The sweep in plain lines: the runs and their grid values, and the cache passes they share."""
    lines = [f"sweep {sweep.sweep_id}: {len(sweep.trainings)} runs of {sweep.preset}, "
             f"{len(sweep.caches)} cache pass{'es' if len(sweep.caches) > 1 else ''}"]
    for cache in sweep.caches:
        users = [t.run_id for t in sweep.trainings if t.cache == cache.run_id]
        lines.append(f"  cache pass {cache.run_id} (LORA_GYM_STAGE=cache) for {len(users)} run"
                     f"{'s' if len(users) > 1 else ''}")
    for training in sweep.trainings:
        lines.append(f"  run {training.run_id} (LORA_GYM_STAGE=train): {' '.join(training.grid)}")
    return lines
