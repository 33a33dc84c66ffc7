"""The run folder and its run.json: a new folder per run, or, when LORA_GYM_RUN_ID names a run that did not
succeed (preempted, stopped, past its time limit, failed), that same folder again, so the run continues.

Whoever works in a run folder holds its lock (cachelock) for the whole run: two containers started with one
run id never work in it at once, and a restarted container waits at most RUN_LOCK_STALE_S for the lock of the
one it replaces.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from launcher import __version__
from launcher.core import runfiles
from launcher.core.errors import UserError
from launcher.core.job import Job, read_lock
from launcher.core.plan import Plan, make_plan
from launcher.core.provenance import dataset_record, image_record
from lora_gym_entrypoint import cachelock
from lora_gym_entrypoint.manifest import Manifest, now

RUN_LOCK = ".lora-gym-run.lock"
# Four missed heartbeats (every 30 s): the holder is gone. Short, so a restart after preemption starts soon.
RUN_LOCK_STALE_S = 120.0


@dataclass
class Run:
    job: Job
    manifest: Manifest
    restart: bool  # True when this continues an earlier, unfinished attempt
    owner: dict  # who we are, in every lock we take
    lock: cachelock.Lock


def plan_sha256(plan: Plan) -> str:
    """Identity of what a run does: a restart must do exactly the same (same preset, overrides, dataset, paths)."""
    steps = [[step.name, list(step.argv)] for step in plan.steps]
    return hashlib.sha256(json.dumps([steps, plan.dataset_config]).encode()).hexdigest()


def _labels(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):
        return None


def new_manifest(job: Job, settings) -> Manifest:
    plan = job.plan
    return Manifest(Path(plan.run_dir) / "run.json", {
        "lora_gym_version": __version__, "run_id": plan.run_id, "status": "running", "exit_code": None,
        # What `launcher run --from` starts again: the preset as written (content), its overrides, the image as
        # pinned, every dataset file's sha256 and the locked weights (the image labels add musubi's commit).
        "preset": {"origin": job.loaded.origin, "name": plan.preset, "sha256": job.loaded.content_hash,
                   "overrides": list(job.loaded.overrides), "content": job.loaded.text},
        "expert": plan.expert, "stage": settings.stage, "plan_sha256": plan_sha256(plan),
        "settings": job.loaded.preset.model_dump(mode="json"),
        "dataset": {"counts": job.layout.counts, "dirs": [
            {"path": d.relpath, "kind": d.kind, "files": len(d.files), "sha256": d.digest} for d in job.layout.dirs],
            **dataset_record(job.layout)},
        "image": image_record(settings.image, settings.image_id),
        "weights": [{"repo": w.repo, "path": w.path, "sha256": w.sha256, "size": w.size} for w in plan.weights],
        "image_labels": _labels(settings.image_labels), "started_at": now(), "ended_at": None,
        # training: per train step, the total step count musubi reported (what a resume continues);
        # restarts: one entry per restart of this run folder.
        "steps": [], "training": {}, "restarts": [], "outputs": []})


def _claim(job: Job, settings) -> Job:
    """Create a new run folder; an automatic run id gets a -2, -3, ... suffix instead of reusing one."""
    base = job.plan.run_id
    for attempt in range(2, 1000):
        try:
            Path(job.plan.run_dir).mkdir(parents=True)
            return job
        except FileExistsError:
            if settings.run_id:
                raise
            plan = make_plan(job.loaded.preset, settings.expert, job.layout, f"{base}_{attempt}", settings.paths,
                             read_lock(settings.weights_lock), pair=settings.pair)
            job = replace(job, plan=plan)
    raise UserError(f"too many runs named {job.plan.run_id}: set LORA_GYM_RUN_ID")


def _earlier(job: Job, run_dir: Path, stage: str) -> dict:
    """The earlier attempt's run.json, if this run may continue it (a succeeded one only for its samples)."""
    run_id = job.plan.run_id
    if not (run_dir / "run.json").exists():
        raise UserError(f"run folder {run_dir} exists without a run.json: choose another LORA_GYM_RUN_ID")
    # What the continued run reads back must be in the shape it was written (launcher/core/runfiles.py).
    fix = "this run folder cannot be continued: choose another LORA_GYM_RUN_ID"
    data = runfiles.read(run_dir / "run.json", fix=fix)
    runfiles.read_if_there(run_dir / "progress.json", fix=fix)
    if data.get("status") == "succeeded" and stage != "samples":
        raise UserError(f"run {run_id} already succeeded ({run_dir}): choose another LORA_GYM_RUN_ID "
                        "(finished runs are never overwritten)")
    if data.get("plan_sha256") != plan_sha256(job.plan):
        raise UserError(f"run {run_id} was started with other settings (preset, overrides, expert, dataset or "
                        "paths): restart it with the same ones, or choose another LORA_GYM_RUN_ID")
    return data


def _reopen(job: Job, settings, owner: dict, log: Callable[[str], None], cancelled) -> Run:
    run_dir = Path(job.plan.run_dir)
    try:
        lock = cachelock.acquire(run_dir / RUN_LOCK, owner, RUN_LOCK_STALE_S, log, cancelled,
                                 give_up_after=RUN_LOCK_STALE_S + 30)
    except cachelock.Busy as exc:
        raise UserError(f"run {job.plan.run_id} is running now ({exc}): wait for it to end, or choose another "
                        "LORA_GYM_RUN_ID") from None
    try:
        data = _earlier(job, run_dir, settings.stage)
    except BaseException:
        lock.release()
        raise
    data["restarts"] = [*data.get("restarts", []), {"at": now(), "status_before": data.get("status"),
                                                    "exit_code_before": data.get("exit_code")}]
    data.update(status="running", exit_code=None, ended_at=None, stage=settings.stage)
    data.setdefault("training", {})
    log(f"continuing run {job.plan.run_id} in {run_dir} (its last attempt: {data['restarts'][-1]['status_before']})")
    return Run(job, Manifest(run_dir / "run.json", data), True, owner, lock)


def open_run(job: Job, settings, log: Callable[[str], None], cancelled: Callable[[], bool]) -> Run:
    """The folder this run works in, locked, with its manifest written."""
    owner = cachelock.new_owner(job.plan.run_id)
    try:
        job = _claim(job, settings)
    except FileExistsError:  # only for an explicit LORA_GYM_RUN_ID: a restart of that run
        run = _reopen(job, settings, owner, log, cancelled)
    else:
        owner["run_id"] = job.plan.run_id
        lock = cachelock.acquire(Path(job.plan.run_dir) / RUN_LOCK, owner, RUN_LOCK_STALE_S, log, cancelled)
        run = Run(job, new_manifest(job, settings), False, owner, lock)
    run.manifest.write()
    return run
