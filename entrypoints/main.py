"""The container entrypoint: read the environment, plan, preflight, run the steps, write run.json.

With arguments it execs them instead (platforms such as Modal override the command); it never needs
a TTY. Exit codes: 0 success, 2 bad input (one `error:` line per problem), otherwise the exit code
of the first failing step (128+N when a step died by signal N).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import sys
from dataclasses import replace
from pathlib import Path

from launcher import __version__
from launcher.core.errors import UserError
from launcher.core.job import Job, prepare, read_lock
from launcher.core.plan import make_plan
from lora_gym_entrypoint import env
from lora_gym_entrypoint.manifest import Manifest, now
from lora_gym_entrypoint.runner import format_argv, run_step

TAG = "lora-gym"


def log(message: str) -> None:
    print(f"[{TAG}] {message}", flush=True)


def preflight(job: Job, paths) -> None:
    """Everything that must hold before minutes of model loading: weights present, musubi installed."""
    problems = []
    scripts = Path(paths.musubi) / "src" / "musubi_tuner"
    if not scripts.is_dir():
        problems.append(f"musubi-tuner not found at {paths.musubi}: set LORA_GYM_MUSUBI_DIR to its checkout")
    for weight in job.plan.weights:
        path = Path(weight.container_path)
        if not path.is_file():
            problems.append(f"weight file {path} is missing: mount the weights at LORA_GYM_WEIGHTS_DIR "
                            f"or use a full image that contains {weight.repo}:{weight.path}")
        elif weight.size is not None and path.stat().st_size != weight.size:
            problems.append(f"weight file {path} has {path.stat().st_size} bytes, the lock says {weight.size}: "
                            "it is truncated or a different file; download it again")
    if problems:
        raise UserError(*problems)


def claim_run_dir(job: Job, settings) -> Job:
    """Create the run folder, never reusing one: an automatic run id gets a -2, -3, ... suffix."""
    base = job.plan.run_id
    for attempt in range(2, 1000):
        try:
            Path(job.plan.run_dir).mkdir(parents=True)
            return job
        except FileExistsError:
            if settings.run_id:
                raise UserError(f"run folder {job.plan.run_dir} already exists: choose another "
                                "LORA_GYM_RUN_ID (earlier runs are never overwritten)") from None
            run_id = f"{base}_{attempt}"
            plan = make_plan(job.loaded.preset, settings.expert, job.layout, run_id, settings.paths,
                             read_lock(settings.weights_lock))
            job = replace(job, plan=plan)
    raise UserError(f"too many runs named {job.plan.run_id}: set LORA_GYM_RUN_ID")


def _labels(path: str) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")) if path else None
    except (OSError, ValueError):
        return None


def new_manifest(job: Job, settings) -> Manifest:
    plan = job.plan
    return Manifest(Path(plan.run_dir) / "run.json", {
        "lora_gym_version": __version__, "run_id": plan.run_id, "status": "running", "exit_code": None,
        "preset": {"origin": job.loaded.origin, "name": plan.preset, "sha256": job.loaded.content_hash,
                   "overrides": list(job.loaded.overrides)},
        "expert": plan.expert, "settings": job.loaded.preset.model_dump(mode="json"),
        "dataset": {"counts": job.layout.counts, "dirs": [
            {"path": d.relpath, "kind": d.kind, "files": len(d.files), "sha256": d.digest} for d in job.layout.dirs]},
        "image_labels": _labels(settings.image_labels), "started_at": now(), "ended_at": None,
        "steps": [], "outputs": []})


class Stop:
    """Remembers a SIGTERM/SIGINT, whether it came during a step (via the runner) or between steps."""

    signal: int | None = None

    def __call__(self, signum: int, _frame=None) -> None:
        self.signal = signum

    @contextlib.contextmanager
    def listening(self):
        # Between steps the signal only sets the flag; the runner swaps in its forwarder during a step.
        previous = {sig: signal.signal(sig, self) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _write_markers(markers) -> None:
    for marker in markers:
        Path(marker).parent.mkdir(parents=True, exist_ok=True)
        Path(marker).write_text(json.dumps({"at": now()}) + "\n")


def run_steps(job: Job, manifest: Manifest, stop: Stop) -> int:
    # A training run needs no network: tokenizers come from the image's Hub cache.
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    for step in job.plan.steps:
        if stop.signal is not None:
            return 128 + stop.signal
        if step.markers and all(Path(m).is_file() for m in step.markers):
            log(f"{step.name}: skipped, its output for these inputs is already cached")
            manifest.step(step.name, step.argv, "skipped")
            continue
        log(f"{step.name}: {format_argv(step.argv)}")
        started = now()
        code = run_step(step.name, step.argv, env=child_env, on_signal=stop)
        if code == 0 and stop.signal is None:
            _write_markers(step.markers)  # only a complete, uninterrupted step makes its cache valid
        manifest.step(step.name, step.argv, "succeeded" if code == 0 else "failed", code, started)
        if code != 0 or stop.signal is not None:
            code = code or 128 + stop.signal
            log(f"{step.name} {'was stopped' if stop.signal else 'failed'} (exit code {code}); stopping the run")
            return code
    return 0


def run_job(settings) -> int:
    lock = read_lock(settings.weights_lock)
    job = prepare(settings.preset, settings.expert, settings.overrides, settings.dataset_dir,
                  run_id=settings.run_id, paths=settings.paths, lock=lock)
    if settings.dry_run:
        from launcher.cli.render import as_text

        print(as_text(job))
        return 0
    if settings.fetch_missing_weights:
        from lora_gym_entrypoint.weights import ensure_weights

        report = ensure_weights(job.plan.weights, settings.weights_lock, os.environ.get("HF_HOME", "/opt/hf"), log)
        log(f"weights: {report.downloaded} downloaded ({report.bytes / 1e9:.2f} GB), {report.present} present")
    preflight(job, settings.paths)
    job = claim_run_dir(job, settings)
    Path(job.plan.dataset_config_path).write_text(job.plan.dataset_config, encoding="utf-8")
    manifest = new_manifest(job, settings)
    manifest.write()
    log(f"run {job.plan.run_id}: {len(job.plan.steps)} steps, output in {job.plan.run_dir}")
    with Stop().listening() as stop:
        code = run_steps(job, manifest, stop)
    status = "succeeded" if code == 0 else "stopped" if stop.signal else "failed"
    manifest.finish(status, code)
    log(f"run {status}; manifest: {manifest.path}")
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # an explicit command replaces the job (e.g. `bash`, or a platform's own command)
        os.execvp(argv[0], argv)
    try:
        settings = env.read(os.environ, tensorboard=importlib.util.find_spec("tensorboard") is not None)
        return run_job(settings)
    except UserError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr, flush=True)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
