"""A sweep on this machine: each cache pass, then the trainings, as ordinary `--backend local` containers.

Trainings run one after another with the GPUs `--gpu-ids` gives (all by default), or, with several GPU ids
(`--gpu-ids 0,1`), one per GPU at a time. Each container is launcher/backends/local.py's ContainerSpec of that
run's job plus LORA_GYM_STAGE, so `--dry-run` prints exactly the `docker run` commands that run.
"""

from __future__ import annotations

import dataclasses
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from launcher.backends import LaunchOptions, labels
from launcher.backends.local import ContainerSpec, container_spec, docker_run_argv, output_dir, render_command
from launcher.backends.local_gpus import host_gpu_count, parse_gpus
from launcher.core.job import Job
from launcher.sweep.prepare import Sweep

Execute = Callable[[ContainerSpec], int]  # runs one container to its end: its exit status


def stage_spec(job: Job, options: LaunchOptions, run_id: str, stage: str, gpus: str) -> ContainerSpec:
    spec = container_spec(job, dataclasses.replace(options, run_id=run_id, gpus=gpus))
    return dataclasses.replace(spec, env=spec.env | {"LORA_GYM_STAGE": stage})


def slots(gpus: str, per_run: int = 1) -> list[str]:
    """What each parallel worker gets: `per_run` of the listed GPU ids each (one run per group), else one
    worker with all of them."""
    ids = [g.strip() for g in gpus.split(",")] if gpus.strip() not in ("all", "none") else []
    groups = [",".join(ids[i:i + per_run]) for i in range(0, len(ids) - per_run + 1, per_run)]
    return groups if len(groups) > 1 else [gpus]


def _per_run(sweep: Sweep) -> int:
    return sweep.trainings[0].job.plan.resources.gpu_count


def containers(sweep: Sweep, options: LaunchOptions) -> list[tuple[str, ContainerSpec]]:
    """(run id, spec) of every container in order: the cache passes (on the first GPU slot), then the runs
    (their GPU slot assigned round-robin, which `launch` replaces by whichever slot is free first)."""
    parse_gpus(options.gpus)  # the whole list (each container gets a slot of it): no id negative or repeated
    workers = slots(options.gpus, _per_run(sweep))
    found = [(c.run_id, stage_spec(c.job, options, c.run_id, "cache", workers[0])) for c in sweep.caches]
    for n, training in enumerate(sweep.trainings):
        found.append((training.run_id, stage_spec(training.job, options, training.run_id, "train",
                                                  workers[n % len(workers)])))
    return found


def dry_run(sweep: Sweep, options: LaunchOptions) -> str:
    lines = []
    for run_id, spec in containers(sweep, options):
        lines += [f"# {run_id}", render_command(docker_run_argv(spec))]
    workers = slots(options.gpus, _per_run(sweep))
    how = f"one per GPU ({', '.join(workers)})" if len(workers) > 1 else "one after another"
    return "\n".join(lines + [f"# the cache pass{'es' if len(sweep.caches) > 1 else ''} first, then the runs {how}"])


def check(sweep: Sweep, options: LaunchOptions) -> None:
    """Before the sweep's plan is printed: the values every container needs (--output, --cache-volume, the image's
    name), --gpu-ids against this machine's GPUs, then the engine and the image's labels (launch connects again; a
    local socket is cheap)."""
    containers(sweep, options)
    parse_gpus(options.gpus, host_gpu_count())
    docker_execute(sweep, options)


def docker_execute(sweep: Sweep, options: LaunchOptions) -> Execute:
    """The real engine: checked once (engine, image, labels), then one container per call."""
    from launcher.backends.local import connect, engine_of, image_labels, pinned, run_container
    from launcher.backends.local_gpus import gpu_requests

    client = connect()
    engine = engine_of(client)
    job = sweep.caches[0].job
    image = containers(sweep, options)[0][1].image
    labels.check_image(image, image_labels(client, image, job.loaded.preset.family), job.loaded.preset.family,
                       job.loaded.preset.model.task)
    return lambda spec: run_container(client, pinned(client, spec), gpu_requests(spec.gpus, *engine))


def _fan_out(trainings: list[tuple[str, ContainerSpec]], workers: list[str], execute: Execute) -> dict[str, int]:
    """Run the trainings, each worker (a GPU slot) taking the next one as it finishes its last."""
    todo: queue.Queue = queue.Queue()
    for item in trainings:
        todo.put(item)
    codes: dict[str, int] = {}

    def work(gpus: str) -> None:
        while True:
            try:
                run_id, spec = todo.get_nowait()
            except queue.Empty:
                return
            codes[run_id] = execute(dataclasses.replace(spec, gpus=parse_gpus(gpus)))
            print(f"launcher: {run_id} ended with exit code {codes[run_id]}", file=sys.stderr, flush=True)

    if len(workers) == 1:  # in this thread, so Ctrl-C stops the running container as `launcher run` does
        work(workers[0])
        return codes
    threads = [threading.Thread(target=work, args=(slot,), daemon=True) for slot in workers]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)  # short joins, so Ctrl-C reaches this thread
    except KeyboardInterrupt:
        # The containers run on in the engine: say how to stop them rather than leave them unnoticed.
        print("launcher: stopped waiting; the running trainings go on: stop them with `docker stop $(docker ps -q "
              f"--filter label={labels.LAUNCHED_BY}=launcher)`", file=sys.stderr)
        raise
    return codes


def launch(sweep: Sweep, options: LaunchOptions, execute: Execute | None = None) -> int:
    """The cache passes, then every training; 0 when all succeeded, else the first failure's exit code.
    A failed cache pass stops its sweep (its trainings could not start); a failed training does not stop
    the others."""
    from launcher.sweep import registry

    everything = containers(sweep, options)  # bad options fail before the engine is touched
    execute = execute or docker_execute(sweep, options)
    Path(output_dir(options)).mkdir(parents=True, exist_ok=True)  # only now: a refused sweep writes nothing
    registry.save_sweep(sweep, "local", {"output": output_dir(options)})
    caches = everything[:len(sweep.caches)]
    for run_id, spec in caches:
        print(f"launcher: cache pass {run_id}", file=sys.stderr, flush=True)
        code = execute(spec)
        if code != 0:
            print(f"launcher: cache pass {run_id} failed (exit code {code}); no training started", file=sys.stderr)
            return code
    codes = _fan_out(everything[len(caches):], slots(options.gpus, _per_run(sweep)), execute)
    failed = [run_id for run_id, _ in everything[len(caches):] if codes.get(run_id, 1) != 0]
    print(f"launcher: sweep {sweep.sweep_id}: {len(codes) - len(failed)} of {len(sweep.trainings)} runs succeeded"
          + (f"; failed: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return next((codes.get(r, 1) for r in failed), 0)


def status_rows(record: dict) -> list[tuple[str, ...]]:
    from launcher.sweep.registry import local_reader, rows

    return rows(record, local_reader(record), None)


def pull(record: dict, dest: str) -> int:
    print(f"the runs of local sweep {record['run_id']} are already in {record['output']}: nothing to download")
    return 0
