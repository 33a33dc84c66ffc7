"""A sweep on RunPod: every pod on the family's one network volume. The cache passes run first, one pod each
(LORA_GYM_STAGE=cache); the launcher waits for them to end (each pod ends itself) and reads their run.json
from the volume; then one self-terminating pod per training (LORA_GYM_STAGE=train), all at once. Waiting here
rather than starting every pod at once keeps N-1 GPUs from billing while they wait on the cache lock.

The sweep's record has the shape of a RunPod run's (volume, pods), so `launcher stop|logs|pull SWEEP` are the
backend's own verbs over all its pods; `status SWEEP` prints one row per run from each run.json."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time

from launcher import cost, runs
from launcher.backends import LaunchOptions, runpod
from launcher.core.errors import UserError
from launcher.sweep import registry
from launcher.sweep.prepare import Sweep

POLL_S = 30.0  # how often the launcher looks at the cache pods while it waits for them


def quotes(sweep: Sweep, options: LaunchOptions, backend=None) -> tuple[list[cost.Quote], cost.Quote]:
    backend = backend or runpod.RunPodBackend()
    runs_ = [backend.quote(t.job, options) for t in sweep.trainings]
    return runs_, dataclasses.replace(runs_[0], gpus=1)  # a cache pass is one pod


def _env(run_id: str, stage: str) -> dict[str, str]:
    return {"LORA_GYM_RUN_ID": run_id, "LORA_GYM_STAGE": stage}


def dry_run(sweep: Sweep, options: LaunchOptions) -> str:
    check(sweep, options)  # the image and the volume id, before any body is built
    backend = runpod.RunPodBackend()
    backend._catalog, source = runpod.offline_catalog()
    volume = options.volume or f"<id of network volume lora-gym-{sweep.caches[0].job.loaded.preset.family}>"
    datacenter = None if options.volume else os.environ.get("RUNPOD_DATACENTER", runpod.DEFAULT_DATACENTER)
    lines = []
    stages = [(c.job, c.job.plan.expert, c.run_id, "cache") for c in sweep.caches]
    stages += [(t.job, t.expert, t.run_id, "train") for t in sweep.trainings]
    for n, (job, expert, run_id, stage) in enumerate(stages):
        if n == len(sweep.caches):
            lines.append("# ... once the cache pass pods ended with exit code 0, every training pod at once:")
        quote = backend.quote(job, options)
        body = runpod.pod_body(job, options, expert, quote.gpu, volume, datacenter,
                               backend._hours(job, options, quote))
        body["env"] |= _env(run_id, stage)
        lines += [f"# POST /pods ({stage}: {run_id})", json.dumps(body, indent=2)]
    lines.append(f"# GPU checked against {source}; each pod terminates itself when its job ends")
    lines.append(runpod.pull_note(sweep.trainings[0].job, options))
    return "\n".join(lines)


def _wait(backend, record: dict, pods: list[dict]) -> list[str]:
    """Wait for the cache pods to end; the run ids of those whose run.json does not say exit code 0."""
    from launcher.backends import runpod_s3

    pending = list(pods)
    while pending:
        pending = [p for p in pending if (backend.api().pod(p["id"]) or {}).get("status", "TERMINATED")
                   not in runpod.ENDED]
        if pending:
            time.sleep(POLL_S)
    s3 = runpod_s3.client(record["volume"]["dataCenter"])
    failed = []
    for pod in pods:
        manifest = runpod_s3.read_json(s3, record["volume"]["id"], f"{runpod.ROOT}/output/{pod['run_id']}/run.json")
        if not manifest or manifest.get("exit_code") != 0:
            failed.append(pod["run_id"])
    return failed


def check(sweep: Sweep, options: LaunchOptions) -> None:
    """What RunPod needs to pull the image, checked before the sweep's plan is printed."""
    runpod.check_pull(sweep.trainings[0].job, options)


def launch(sweep: Sweep, options: LaunchOptions) -> int:
    from launcher.backends import runpod_s3

    backend = runpod.RunPodBackend()
    first = sweep.trainings[0].job
    runpod.check_pull(first, options)  # a bad image, credential id, key or S3 key fails before anything is made
    backend.api()
    runpod_s3.client(runpod.DEFAULT_DATACENTER)
    quote = quotes(sweep, options, backend)[0][0]
    volume = backend._volume(first, options)
    backend._upload(first, options, volume)
    record = registry.save_sweep(sweep, "runpod", {
        "volume": {"id": volume["id"], "dataCenter": volume["dataCenter"]}, "gpu": quote.gpu,
        "usd_per_hour": quote.usd_per_hour, "max_hours": backend._hours(first, options, quote), "pods": []})
    try:
        for cache in sweep.caches:
            _start(backend, record, cache.job, cache.job.plan.expert, cache.run_id, "cache", options, volume)
        print(f"launcher: sweep {sweep.sweep_id}: waiting for the cache pass (Ctrl-C stops waiting; its pod ends "
              "itself, and no training starts)", file=sys.stderr, flush=True)
        failed = _wait(backend, record, list(record["pods"]))
        if failed:
            raise UserError(f"the cache pass {', '.join(failed)} did not succeed, so no training was started: "
                            f"see `launcher logs {sweep.sweep_id}`")
        for training in sweep.trainings:
            _start(backend, record, training.job, training.expert, training.run_id, "train", options, volume)
    except BaseException:
        if any(p.get("stage") == "train" for p in record["pods"]):  # half a sweep is not left billing
            for pod in record["pods"]:
                with contextlib.suppress(UserError):
                    backend.api().terminate_pod(pod["id"])
        raise
    print(f"launcher: sweep {sweep.sweep_id}: {len(sweep.trainings)} training pods started on RunPod, each ends "
          f"itself. `launcher status {sweep.sweep_id}`, `launcher pull {sweep.sweep_id} DIR`", file=sys.stderr)
    return 0


def _start(backend, record, job, expert, run_id: str, stage: str, options, volume) -> None:
    entry = backend._place(job, options, expert, volume, _env(run_id, stage))
    record["pods"].append(entry | {"label": run_id, "stage": stage})
    runs.save(record)  # at once: `launcher stop` must find every pod that was created


def status_rows(record: dict) -> list[tuple[str, ...]]:
    from launcher.backends import runpod_s3

    s3 = runpod_s3.client(record["volume"]["dataCenter"])

    def read(run_id: str, name: str) -> dict | None:
        return runpod_s3.read_json(s3, record["volume"]["id"], f"{runpod.ROOT}/output/{run_id}/{name}")
    return registry.rows(record, read, record.get("usd_per_hour"))


def pull(record: dict, dest: str) -> int:
    return runpod.RunPodBackend().pull(record, dest)
