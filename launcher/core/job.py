"""The impure edge around the pure plan: read the preset and the dataset, then plan.

The launcher's `run --dry-run` and the container entrypoint both come through here, so the plan a
user previews is the plan the container runs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from launcher.core.dataset import DatasetLayout, scan_dataset
from launcher.core.errors import UserError
from launcher.core.plan import ContainerPaths, Plan, experts_to_train, make_plan
from launcher.core.presets import LoadedPreset, load_preset

DEFAULT_PATHS = ContainerPaths()


@dataclass(frozen=True)
class Job:
    loaded: LoadedPreset
    layout: DatasetLayout
    plan: Plan


def new_run_id(preset: str, expert: str | None, now: datetime) -> str:
    """`<preset>[-<expert>]-<UTC time>`: sortable, and readable in an output folder listing."""
    return f"{preset}{'-' + expert if expert else ''}-{now.strftime('%Y%m%d-%H%M%S')}"


def read_lock(path: str | Path | None) -> dict[str, Mapping]:
    """A weights lock (`{"files": [{"repo", "path", "revision", "size", "sha256"}]}`) keyed by repo:path."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return {f"{f['repo']}:{f['path']}": f for f in data["files"]}
    except FileNotFoundError:
        raise UserError(f"weights lock {path} not found: point LORA_GYM_WEIGHTS_LOCK at the image's lock file") \
            from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"weights lock {path} is malformed ({exc}): regenerate it with make lock-weights") from None


def prepare(preset_ref: str, expert: str | None, overrides: Sequence[str], dataset_dir: str | Path,
            run_id: str | None = None, paths: ContainerPaths = DEFAULT_PATHS,
            lock: Mapping[str, Mapping] | None = None, now: datetime | None = None,
            locations: Mapping[str, str] | None = None, pair: str | None = None) -> Job:
    """Load and check everything, then plan; every problem is a UserError before any work starts."""
    if not str(dataset_dir).strip():  # Path("") is the current folder: never what an empty value meant
        raise UserError("the dataset folder is empty text: pass --dataset (or LORA_GYM_DATASET_DIR) with a folder")
    loaded = load_preset(preset_ref, overrides)
    experts_to_train(loaded.preset, expert)  # cheap: report a wrong --expert before reading the dataset
    layout = scan_dataset(dataset_dir)
    run_id = run_id or new_run_id(loaded.preset.name, expert, now or datetime.now(UTC))
    return Job(loaded, layout, make_plan(loaded.preset, expert, layout, run_id, paths, lock, locations, pair))
