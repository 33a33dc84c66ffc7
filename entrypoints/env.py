"""The container's environment contract: every variable the entrypoint reads, read here and only here.

entrypoints/README.md documents the same table; a test keeps the two in sync.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from launcher.core.errors import UserError, debugging
from launcher.core.inputs import finite_number, safe_name
from launcher.core.plan import ContainerPaths


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    meaning: str


VARS = (
    Var("LORA_GYM_PRESET", "", "Preset name (`launcher presets list`) or path to a preset .toml. Required."),
    Var("LORA_GYM_EXPERT", "", "Wan 2.2 only: `high`, `low` or `both`. Must be empty for Wan 2.1."),
    Var("LORA_GYM_SET", "", "Overrides, shell-quoted `key=value` words, e.g. `train.max_train_epochs=30`."),
    Var("LORA_GYM_DATASET_DIR", "/dataset", "Dataset folder (media plus .txt captions); read only."),
    Var("LORA_GYM_OUTPUT_DIR", "/output", "Each run writes a new folder here: LoRAs, run.json, logs."),
    Var("LORA_GYM_CACHE_DIR", "/cache", "Latent and text-encoder caches, merged Lightning DiTs."),
    Var("LORA_GYM_WEIGHTS_DIR", "", "Model files as `<repo>/<path>`; empty: `/weights`, or `<cache>/weights` if slim."),
    Var("LORA_GYM_FLAVOR", "full", "`slim`: download missing locked weight files at start (the image sets it)."),
    Var("LORA_GYM_WEIGHTS_LOCK", "", "Weights lock JSON; when set, file sizes are checked against it."),
    Var("LORA_GYM_WEIGHTS_LAYOUT", "", "The image's weights layout JSON: files stored as shards or parts under its "
        "layer cap (the image sets it)."),
    Var("LORA_GYM_MUSUBI_DIR", "/opt/musubi-tuner", "musubi-tuner checkout (installed) whose scripts run."),
    Var("LORA_GYM_PYTHON", "python", "Python interpreter for the cache and merge steps."),
    Var("LORA_GYM_IMAGE_LABELS", "", "JSON file with the image's labels, copied into run.json."),
    Var("LORA_GYM_IMAGE", "", "The image reference the launcher started (`NAME[:TAG]@sha256:...` when pinned: a cloud "
        "launch pins a tag to its registry's digest), recorded in run.json so `launcher run --from` runs the same "
        "image again."),
    Var("LORA_GYM_IMAGE_ID", "", "The local engine's id of that image (`sha256:...`), set by `--backend local`."),
    Var("LORA_GYM_RUN_ID", "", "Name of the run folder; default `<preset>[-<expert>]-<UTC time>`. An unfinished "
        "run's name continues that run."),
    Var("LORA_GYM_STAGE", "all", "`cache`: only the cache and Lightning merge steps; `train`: only the trainings "
        "(their caches must exist); `samples`: only the samples of a run whose trainings are done (its folder again, "
        "even when it succeeded)."),
    Var("LORA_GYM_PAIR_DIR", "", "Wan 2.2 `both` trained in two containers: the other expert's run folder. The "
        "samples pair both LoRAs; the run that finishes training last takes them (`train` stage: a later `samples`)."),
    Var("LORA_GYM_LOCK_TIMEOUT", "21600", "Seconds after which a cache lock whose holder stopped renewing it "
        "(every 30 s) is broken."),
    Var("LORA_GYM_CACHE_LOCK", "file", "`file`: a cache step waits for another run caching the same inputs (a lock "
        "file made by an exclusive create); `none`: no lock, for storage where it is not atomic (Modal volumes, "
        "bucket mounts). Either way cache files land whole."),
    Var("LORA_GYM_MAX_HOURS", "", "Stop the run (as with SIGTERM) after this many hours; empty: no limit."),
    Var("LORA_GYM_TERMINATE_POD", "0", "`1` (RunPod): terminate this pod (RUNPOD_POD_ID) when the job ends, "
        "whatever its outcome."),
    Var("LORA_GYM_DRY_RUN", "0", "`1`: print the plan and exit without running or writing anything."),
    Var("LORA_GYM_DEBUG", "0", "`1`: an input error (a path or file that failed) shows its traceback instead of "
        "one `error:` line."),
)
DEFAULTS = {v.name: v.default for v in VARS}
STAGES = ("all", "cache", "train", "samples")
CACHE_LOCKS = ("file", "none")
TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off", "")
# Beyond these a value is a typo: a 30-day run, a lock nobody renewed for 30 days.
MAX_HOURS = 720.0
MAX_LOCK_TIMEOUT_S = 30 * 86400.0


@dataclass(frozen=True)
class Settings:
    preset: str
    expert: str | None
    overrides: tuple[str, ...]
    dataset_dir: str
    paths: ContainerPaths
    weights_lock: str
    fetch_missing_weights: bool
    image_labels: str
    run_id: str | None
    dry_run: bool
    stage: str = "all"
    lock_timeout: float = 21600.0
    weights_layout: str = ""
    cache_lock: str = "file"
    pair: str | None = None
    image: str = ""  # LORA_GYM_IMAGE and LORA_GYM_IMAGE_ID: which image this is, for run.json
    image_id: str = ""


def _flag(name: str, value: str) -> bool:
    if value.lower() in TRUE_WORDS + FALSE_WORDS:
        return value.lower() in TRUE_WORDS
    raise UserError(f"{name}={value!r} is not a yes/no value: use 1 or 0")


def _overrides(value: str) -> tuple[str, ...]:
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise UserError(f"LORA_GYM_SET cannot be split into words ({exc}): check its quotes") from None


def _stage(value: str) -> str:
    if value not in STAGES:
        raise UserError(f"LORA_GYM_STAGE={value!r} is not a stage: use all, cache, train or samples")
    return value


def _cache_lock(value: str) -> str:
    if value not in CACHE_LOCKS:
        raise UserError(f"LORA_GYM_CACHE_LOCK={value!r} is not a lock kind: use file, or none where the cache "
                        "volume has no atomic exclusive create")
    return value


def _seconds(name: str, value: str) -> float:
    return finite_number(name, value, 0, MAX_LOCK_TIMEOUT_S, "seconds", "21600 for 6 hours")


def max_hours(environ: Mapping[str, str]) -> float | None:
    """LORA_GYM_MAX_HOURS as a positive number, or None; read apart from `read` so a bad preset still gets it."""
    text = environ.get("LORA_GYM_MAX_HOURS", DEFAULTS["LORA_GYM_MAX_HOURS"]).strip()
    return finite_number("LORA_GYM_MAX_HOURS", text, 0, MAX_HOURS, "hours", "12 or 0.5") if text else None


def _run_id(value: str) -> str | None:
    return safe_name(value, "LORA_GYM_RUN_ID") if value else None


def debug(environ: Mapping[str, str]) -> bool:
    """LORA_GYM_DEBUG, read at the error boundary (parsed as the launcher parses it)."""
    return debugging(environ.get("LORA_GYM_DEBUG", DEFAULTS["LORA_GYM_DEBUG"]))


def terminate_pod(environ: Mapping[str, str]) -> bool:
    """Whether to terminate our own pod at exit; even after bad input, or RunPod restarts us in a loop."""
    value = environ.get("LORA_GYM_TERMINATE_POD", DEFAULTS["LORA_GYM_TERMINATE_POD"]).strip().lower()
    return value in TRUE_WORDS


def read(environ: Mapping[str, str], tensorboard: bool) -> Settings:
    """Settings from the environment; unset variables take the defaults in VARS."""
    get = {name: environ.get(name, default).strip() for name, default in DEFAULTS.items()}
    if not get["LORA_GYM_PRESET"]:
        raise UserError("LORA_GYM_PRESET is not set: pass -e LORA_GYM_PRESET=<preset name> "
                        "(see `launcher presets list`)")
    flavor = get["LORA_GYM_FLAVOR"]
    if flavor not in ("full", "slim"):
        raise UserError(f"LORA_GYM_FLAVOR={flavor!r} is neither full nor slim: leave it as the image sets it")
    # Slim images keep downloaded weights on the cache volume, so the next container finds them.
    slim_weights = f"{get['LORA_GYM_CACHE_DIR']}/weights"
    weights = get["LORA_GYM_WEIGHTS_DIR"] or (slim_weights if flavor == "slim" else "/weights")
    paths = ContainerPaths(dataset=get["LORA_GYM_DATASET_DIR"], output=get["LORA_GYM_OUTPUT_DIR"],
                           cache=get["LORA_GYM_CACHE_DIR"], weights=weights,
                           musubi=get["LORA_GYM_MUSUBI_DIR"], python=get["LORA_GYM_PYTHON"],
                           tensorboard=tensorboard)
    return Settings(get["LORA_GYM_PRESET"], get["LORA_GYM_EXPERT"] or None, _overrides(get["LORA_GYM_SET"]),
                    get["LORA_GYM_DATASET_DIR"], paths, get["LORA_GYM_WEIGHTS_LOCK"], flavor == "slim",
                    get["LORA_GYM_IMAGE_LABELS"], _run_id(get["LORA_GYM_RUN_ID"]),
                    _flag("LORA_GYM_DRY_RUN", get["LORA_GYM_DRY_RUN"]), _stage(get["LORA_GYM_STAGE"]),
                    _seconds("LORA_GYM_LOCK_TIMEOUT", get["LORA_GYM_LOCK_TIMEOUT"]), get["LORA_GYM_WEIGHTS_LAYOUT"],
                    _cache_lock(get["LORA_GYM_CACHE_LOCK"]), get["LORA_GYM_PAIR_DIR"] or None,
                    get["LORA_GYM_IMAGE"], get["LORA_GYM_IMAGE_ID"])
