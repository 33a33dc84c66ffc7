"""A sweep on Modal: one app, one `sweep` orchestrator call (CPU) that runs the cache passes, then spawns every
training at once, each on its own GPU (modal_app.sweep). The request is launcher/backends/modal_backend.py's
ModalSpec, so the image, volumes, secrets (by name), dataset upload, the stages' volume commits and the split of
the time limit (modal_backend.split_timeouts) are those of `launcher run --expert both`; each call writes its
ordinary run folder /output/<run id> on the outputs volume, which `status` and `pull` read."""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
from pathlib import Path

from launcher import cost
from launcher.backends import LaunchOptions, modal_backend, modal_timeouts
from launcher.backends.modal_app import OUTPUTS_MOUNT, STAGE_ENV, WORK_DIR
from launcher.core.errors import UserError
from launcher.core.job import Job
from launcher.sweep import registry
from launcher.sweep.prepare import Sweep


def call_env(job: Job, run_id: str, stage: str) -> dict[str, str]:
    """The entrypoint's contract for one stage of one run: its own run folder, its own overrides."""
    origin = job.loaded.origin  # a preset file travels as text to where modal_backend.modal_spec puts it
    preset = f"{WORK_DIR}/presets/{Path(origin).stem}.toml" if Path(origin).is_file() else origin
    env = {"LORA_GYM_PRESET": preset, **STAGE_ENV, "LORA_GYM_OUTPUT_DIR": OUTPUTS_MOUNT, "LORA_GYM_RUN_ID": run_id,
           "LORA_GYM_STAGE": stage}
    if job.plan.expert:
        env["LORA_GYM_EXPERT"] = job.plan.expert
    if job.loaded.overrides:
        env["LORA_GYM_SET"] = shlex.join(job.loaded.overrides)
    return env


def gpu(sweep: Sweep, options: LaunchOptions) -> str:
    """One GPU type for the whole sweep: a grid that changes the GPU class is refused (one class per sweep)."""
    chosen = {modal_backend.choose_gpu(t.job, options) for t in sweep.trainings}
    if len(chosen) > 1:
        raise UserError(f"the grid needs several GPU types ({', '.join(sorted(chosen))}): sweep one GPU class at a "
                        "time, or pick one with --gpu")
    return chosen.pop()


def spec(sweep: Sweep, options: LaunchOptions) -> modal_backend.ModalSpec:
    first = sweep.trainings[0].job
    calls = [modal_backend.Call("cache", call_env(c.job, c.run_id, "cache")) for c in sweep.caches]
    calls += [modal_backend.Call("train", call_env(t.job, t.run_id, "train")) for t in sweep.trainings]
    one = dataclasses.replace(options, gpu_type=gpu(sweep, options))
    base = modal_backend.modal_spec(first, one)
    memory = max(t.job.plan.resources.host_memory_gb for t in sweep.trainings) * 1024 or None
    # One run's limit, shared by its cache pass and its training (the trainings all run at once).
    timeouts = modal_timeouts.split_timeouts(modal_backend.timeout_s(first, one))
    return dataclasses.replace(base, run_id=sweep.sweep_id, calls=tuple(calls), orchestrator="sweep",
                               memory_mib=memory, **timeouts)


def dry_run(sweep: Sweep, options: LaunchOptions) -> str:
    return json.dumps(modal_backend.spec_data(spec(sweep, options)), indent=2)


def quotes(sweep: Sweep, options: LaunchOptions) -> tuple[list[cost.Quote], cost.Quote]:
    one = dataclasses.replace(options, gpu_type=gpu(sweep, options))
    runs = [modal_backend.quote(t.job, one) for t in sweep.trainings]
    return runs, dataclasses.replace(runs[0], gpus=1)  # a cache pass is one call on one GPU


def check(sweep: Sweep, options: LaunchOptions) -> None:
    """What Modal refuses, checked before the sweep's plan is printed: the one GPU type, and what a run's check
    covers (image, cache volume, time limit)."""
    modal_backend.check(sweep.trainings[0].job, dataclasses.replace(options, gpu_type=gpu(sweep, options)))


def launch(sweep: Sweep, options: LaunchOptions) -> int:
    from launcher.backends import modal_app

    request = spec(sweep, options)  # bad options fail before Modal is touched
    price = quotes(sweep, options)[0][0]
    ids = modal_app.start(request, options.dataset, modal_backend.DATASETS_VOLUME)
    registry.save_sweep(sweep, "modal", {"image": request.image, "gpu": price.gpu, "gpus": 1,
                                         "usd_per_hour": price.usd_per_hour, "timeout_s": request.timeout_s,
                                         "outputs_volume": modal_backend.OUTPUTS_VOLUME, **ids})
    print(f"sweep {sweep.sweep_id} started on Modal (app {ids['app_id']}): {len(sweep.caches)} cache pass(es), then "
          f"{len(sweep.trainings)} runs at once. `launcher status {sweep.sweep_id}`, `launcher logs {sweep.sweep_id} "
          f"--follow`, `launcher pull {sweep.sweep_id} DIR`", file=sys.stderr)
    return 0


def reader(record: dict) -> registry.Reader:
    import modal

    from launcher.core import runfiles

    name_of_volume = record.get("outputs_volume", modal_backend.OUTPUTS_VOLUME)
    volume = modal.Volume.from_name(name_of_volume)

    def read(run_id: str, name: str) -> dict | None:
        try:
            raw = b"".join(volume.read_file(f"{run_id}/{name}"))
        except Exception as exc:  # modal's NotFoundError: the run has not started yet
            if type(exc).__name__ not in ("NotFoundError", "FileNotFoundError"):
                raise
            return None
        return runfiles.parse(raw, f"{name_of_volume}:/{run_id}/{name}")  # a damaged one: one `error:` line
    return read


def status_rows(record: dict) -> list[tuple[str, ...]]:
    return registry.rows(record, reader(record), record.get("usd_per_hour"))


def pull(record: dict, dest: str) -> int:
    """Every run's folder into dest/<run id>/ (modal_backend.pull); 1 when some run has no outputs yet."""
    missing = 0
    for entry in record["runs"]:
        try:
            modal_backend.pull({"run_id": entry["run_id"],
                                  "outputs_volume": record.get("outputs_volume", modal_backend.OUTPUTS_VOLUME)}, dest)
        except UserError as exc:
            missing += 1
            print(f"error: {exc.problems[0]}", file=sys.stderr)
    return 1 if missing else 0
