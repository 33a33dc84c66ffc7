"""The container entrypoint: read the environment, plan, preflight, run the steps, write run.json.

With arguments it execs them instead (platforms such as Modal override the command); it never needs
a TTY. Exit codes: 0 success, 2 bad input (one `error:` line per problem), otherwise the exit code
of the first failing step (128+N when a step died by signal N).

A run folder named again by LORA_GYM_RUN_ID after an unfinished attempt continues (rundir.py): cache and
merge steps skip through their markers, finished trainings skip, an interrupted one resumes from its newest
complete saved state (resume.py). A cache step writes into a staging folder of its own and publishes its
files whole into the content-keyed folder, markers last (cacheshare.py), so runs sharing a cache volume never
see or make a partial entry; where the volume has an atomic exclusive create, a lock per cache folder
(cachelock.py) also keeps two runs from computing one entry twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.core.errors import INPUT_ERRORS, UserError, input_problem, report
from launcher.core.inputs import creatable_dir
from launcher.core.job import Job, prepare, read_lock
from launcher.core.plan import Step
from lora_gym_entrypoint import cachelock, cacheshare, env, lora_verify, oom, pod, resume, rundir, samples
from lora_gym_entrypoint.manifest import Manifest, now
from lora_gym_entrypoint.progress import ProgressFile
from lora_gym_entrypoint.runner import format_argv, run_step, step_environment

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


def _done(step: Step) -> bool:
    return cacheshare.done(step.markers)


def stage_steps(steps: Sequence[Step], stage: str, optional: frozenset[str] = frozenset()) -> tuple[Step, ...]:
    """The steps LORA_GYM_STAGE runs: all, the cache and merge steps (they have markers), the trainings, or the
    samples of a trained run.

    `optional` steps serve only the samples: the train stage runs them (skipped when cached) but needs none."""
    cached = [step for step in steps if step.markers]
    if stage == "cache":
        return tuple(cached)
    if stage == "samples":
        return tuple(step for step in steps if step.name in optional)
    if stage == "train":
        missing = [step.name for step in cached if not _done(step) and step.name not in optional]
        if missing:
            raise UserError(f"LORA_GYM_STAGE=train needs the output of {', '.join(missing)}: run LORA_GYM_STAGE=cache "
                            "first with the same preset, expert, overrides, dataset and cache volume")
        return tuple(step for step in steps if not step.markers or step.name in optional)
    return tuple(steps)


@dataclass
class Context:
    """What every step of one run shares."""

    job: Job
    manifest: Manifest
    stop: Stop
    settings: env.Settings
    owner: dict  # who holds our locks
    restart: bool
    child_env: dict
    progress: ProgressFile | None = None

    def stopping(self) -> bool:
        return self.stop.signal is not None


class StepOutput:
    """The step's output stream, passed through; tells `on_total` musubi's total step count when it prints it."""

    def __init__(self, out, on_total):
        self.out, self.on_total = out, on_total

    def write(self, text: str) -> int:
        match = resume.TOTAL_STEPS.search(text)
        if match:
            self.on_total(int(match[1]), int(match[2]))
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def execute(ctx: Context, name: str, argv: Sequence[str], out=None, optional: bool = False) -> int:
    """Runs one step and records it; its exit code, or 128+N when the run got signal N meanwhile."""
    log(f"{name}: {format_argv(argv)}")
    started, out = now(), out or sys.stdout
    if ctx.progress is not None:
        ctx.progress.start(name)
        out = ctx.progress.wrap(name, out)
    code = run_step(name, argv, env=ctx.child_env, on_signal=ctx.stop, out=out)
    ctx.manifest.step(name, argv, "succeeded" if code == 0 else "failed", code, started)
    if code != 0 or ctx.stopping():
        code = code or 128 + ctx.stop.signal
        then = "the LoRAs are done; skipping the remaining samples" if optional and not ctx.stopping() \
            else "stopping the run"
        log(f"{name} {'was stopped' if ctx.stopping() else 'failed'} (exit code {code}); {then}")
    return code


def _skip(ctx: Context, step: Step, why: str) -> int:
    log(f"{step.name}: skipped, {why}")
    ctx.manifest.step(step.name, step.argv, "skipped")
    return 0


def cache_lock(cache_root: str, folder: str) -> Path:
    # Outside the cache folder, whose files belong to musubi; one lock per folder whatever the step or preset.
    return Path(cache_root) / "locks" / f"{hashlib.sha256(folder.encode()).hexdigest()[:16]}.lock"


def _folder_locks(ctx: Context, step: Step):
    folders = {str(Path(marker).parent) for marker in step.markers}
    locks = [cache_lock(ctx.settings.paths.cache, folder) for folder in folders]
    return cachelock.held(locks, ctx.owner, ctx.settings.lock_timeout, log, ctx.stopping)


def run_cache_step(ctx: Context, step: Step) -> int:
    if _done(step):
        return _skip(ctx, step, "its output for these inputs is already cached")
    # The lock only saves duplicate work; staging and publishing keep the entries whole without it.
    locked = ctx.settings.cache_lock == "file"
    with _folder_locks(ctx, step) if locked else contextlib.nullcontext():
        if locked and _done(step):  # another container made it while we waited
            return _skip(ctx, step, "another run cached these inputs while this one waited")
        attempt = f"{ctx.job.plan.run_id}-{ctx.owner['token'][:8]}"
        with cacheshare.staging(step, ctx.settings.paths.cache, attempt, ctx.owner, ctx.settings.lock_timeout,
                                log) as stage:
            code = execute(ctx, step.name, stage.argv)
            if code == 0:
                stage.publish()  # only a complete, uninterrupted step makes its cache valid
        return code


def _arg(argv: Sequence[str], flag: str) -> str:
    return argv[list(argv).index(flag) + 1]


def run_train_step(ctx: Context, step: Step) -> int:
    out_dir, name = _arg(step.argv, "--output_dir"), _arg(step.argv, "--output_name")
    epochs = int(_arg(step.argv, "--max_train_epochs"))
    if ctx.restart and (final := resume.final_lora(out_dir, name)):
        resume.finalize(out_dir, name, epochs)  # it may have finished just before the last attempt ended
        _skip(ctx, step, f"it finished before the restart ({final.name})")
        return lora_verify.after_training(ctx, step, log)  # the last attempt may have ended before its check
    training = ctx.manifest.data["training"]
    attempted = ctx.restart and (step.name in training or any(s["name"] == step.name
                                                               for s in ctx.manifest.data["steps"]))
    start = resume.plan_start(step.argv, training.get(step.name, {}).get("total_steps"), attempted)
    if start.note != "starting":
        log(f"{step.name}: {start.note}")

    def on_total(epochs_run: int, total: int) -> None:
        if start.state is None:  # a full run's total: what every later resume continues
            training[step.name] = {"epochs": epochs_run, "total_steps": total}
            ctx.manifest.write()

    watch = oom.Watch(StepOutput(sys.stdout, on_total))
    code = execute(ctx, step.name, start.argv, watch)
    if attempted:
        ctx.manifest.data["steps"][-1]["resumed_from"] = start.state and {"state": str(start.state.path),
                                                                          "epoch": start.state.epoch}
        ctx.manifest.write()
    if code == 0:
        resume.finalize(out_dir, name, epochs)
        code = lora_verify.after_training(ctx, step, log)  # every key must land on the DiT, or the run fails
    elif watch.seen and not ctx.stopping():
        out_of_memory(ctx, step.name)
    return code


def out_of_memory(ctx: Context, step: str) -> None:
    """Record in run.json, and say, which setting to change instead of leaving a bare traceback."""
    hint = oom.hint_for(ctx.job.plan, step) or "CUDA ran out of memory: plan for a larger GPU with --gpu-memory"
    ctx.manifest.data["failure"] = {"step": step, "kind": "cuda_out_of_memory", "hint": hint}
    ctx.manifest.write()
    log(f"{step}: {hint}")


def _pair_turn(ctx: Context, step: Step) -> int | None:
    """With LORA_GYM_PAIR_DIR, before the first sample step: whether this run samples the pair (None) or not."""
    record, plan = ctx.manifest.data["samples"], ctx.job.plan
    turn = samples.pair_turn(plan.samples, plan.run_dir, ctx.settings.stage) if record["status"] == "pending" \
        else None
    if turn is None:
        return None
    record.update(status=turn[0], reason=turn[1], **({"failed_step": step.name} if turn[0] == "failed" else {}))
    ctx.manifest.write()
    return _skip(ctx, step, f"samples {turn[0]}: {turn[1]}")


def run_sample_step(ctx: Context, step: Step) -> int:
    """One sampled epoch (or a merge or key copy only samples need); a failure is recorded, never the run's."""
    record, plan = ctx.manifest.data["samples"], ctx.job.plan
    if record["status"] in ("failed", "deferred"):
        why = record.get("reason") or f"an earlier sample step ({record.get('failed_step')}) failed"
        return _skip(ctx, step, f"samples {record['status']}: {why}")
    if plan.samples.pair and (skipped := _pair_turn(ctx, step)) is not None:
        return skipped
    epoch = samples.epoch_of(step.name)
    if ctx.restart and epoch is not None:  # a continued run keeps the epochs an earlier attempt sampled
        done = samples.collect(plan.samples, epoch, Path(plan.run_dir))
        if samples.missing(plan.samples, done) == 0:
            record["videos"] += done
            samples.update_sheets(record, Path(plan.run_dir), log)
            record["status"] = "succeeded" if step.name == plan.samples.steps[-1] else record["status"]
            return _skip(ctx, step, "an earlier attempt of this run sampled this epoch")
    watch = samples.LoraWatch(sys.stdout)
    code = run_cache_step(ctx, step) if step.markers else execute(
        ctx, step.name, samples.with_dit_copies(plan.samples, step.argv), watch, optional=True)
    why = samples.keep_epoch(record, plan.samples, epoch, watch, log) if code == 0 and epoch is not None else None
    if why:  # it exited 0, but its videos are not the LoRA's
        record.update(status="failed", failed_step=step.name, exit_code=0, reason=why)
        ctx.manifest.data["steps"][-1].update(status="failed", reason=why)
        log(f"{step.name} failed: {why}; the LoRAs are done; skipping the remaining samples")
    elif code != 0 and not ctx.stopping():
        record.update(status="failed", failed_step=step.name, exit_code=code)
    elif code == 0 and step.name == plan.samples.steps[-1]:
        record["status"] = "succeeded"
    ctx.manifest.write()
    return code if ctx.stopping() else 0


def samples_stopped(ctx: Context) -> int:
    """A stop (Ctrl-C, `launcher stop`, the time limit) during the samples: the LoRAs are done, so is the run."""
    ctx.manifest.data["samples"]["status"] = "stopped"
    ctx.manifest.write()
    log("stopped during the samples: the LoRAs are complete, so the run counts as succeeded")
    return 0


def run_steps(ctx: Context, steps: Sequence[Step]) -> int:
    optional = set(ctx.job.plan.samples.steps) if ctx.job.plan.samples else set()
    after_training = ctx.settings.stage != "cache"  # optional steps come after every training step

    def outcome(step: Step, code: int) -> int:
        return samples_stopped(ctx) if step.name in optional and after_training and ctx.stopping() else code

    for step in steps:
        if ctx.stopping():
            return outcome(step, 128 + ctx.stop.signal)
        run = run_sample_step if step.name in optional else run_cache_step if step.markers else run_train_step
        try:
            code = run(ctx, step)
        except cachelock.Cancelled:
            code = 128 + ctx.stop.signal
        if code != 0:
            return outcome(step, code)
    return 0


def write_report(run_dir: Path, checkpoint: str | None = None) -> None:
    """report.html when the image has matplotlib; never the run's outcome. At a checkpoint, no LoRA key check yet."""
    if importlib.util.find_spec("matplotlib") is None:
        if checkpoint is None:
            log(f"report: matplotlib is not installed here; `launcher report {run_dir.name}` writes it after a pull")
        return
    from launcher import report

    try:
        written = report.write(run_dir, {} if checkpoint else None)
        log(f"report: {written}" + (f" (updated at checkpoint {checkpoint})" if checkpoint else ""))
    except Exception as exc:  # noqa: BLE001 - a report is a convenience: the LoRAs are done
        log(f"report: not written ({type(exc).__name__}: {exc})")


def run_job(settings) -> int:
    from lora_gym_entrypoint import weights

    lock, layout = read_lock(settings.weights_lock), weights.read_layout(settings.weights_layout)
    job = prepare(settings.preset, settings.expert, settings.overrides, settings.dataset_dir,
                  run_id=settings.run_id, paths=settings.paths, lock=lock,
                  locations=weights.locations(layout, settings.paths.weights, settings.paths.cache), pair=settings.pair)
    if settings.dry_run:
        from launcher.cli.render import as_text

        print(as_text(job))
        return 0
    for folder, name in ((settings.paths.output, "LORA_GYM_OUTPUT_DIR"), (settings.paths.cache, "LORA_GYM_CACHE_DIR")):
        creatable_dir(Path(folder), name)  # before anything is downloaded or a run folder says "running"
    if settings.fetch_missing_weights:
        report = weights.ensure_weights(job.plan.weights, settings.weights_lock, os.environ.get("HF_HOME", "/opt/hf"),
                                        log)
        log(f"weights: {report.downloaded} downloaded ({report.bytes / 1e9:.2f} GB), {report.present} present")
    weights.join_parts(job.plan.weights, layout, settings.paths.weights, settings.paths.cache, log)
    preflight(job, settings.paths)
    optional = frozenset(job.plan.samples.steps if job.plan.samples else ())
    steps = stage_steps(job.plan.steps, settings.stage, optional)
    if settings.stage == "samples":
        samples.require_trained(job.plan)
    child_env = step_environment(os.environ)
    with Stop().listening() as stop:
        try:
            run = rundir.open_run(job, settings, log, lambda: stop.signal is not None)
        except cachelock.Cancelled:
            return 128 + stop.signal
        try:
            plan = run.job.plan
            Path(plan.dataset_config_path).write_text(plan.dataset_config, encoding="utf-8")
            samples.write_prompts(plan.samples)
            if plan.samples is not None:
                run.manifest.data["samples"] = samples.new_record(plan.samples)
            stage = "" if settings.stage == "all" else f" (stage {settings.stage})"
            log(f"run {plan.run_id}: {len(steps)} steps{stage}, output in {plan.run_dir}")
            progress = ProgressFile(Path(plan.run_dir) / "progress.json", plan.run_id,
                                    on_checkpoint=lambda saved: write_report(Path(plan.run_dir), saved))
            ctx = Context(run.job, run.manifest, stop, settings, run.owner, run.restart, child_env, progress)
            run.manifest.data.pop("failure", None)  # a restart's earlier out-of-memory is not this attempt's
            code = run_steps(ctx, steps)
            if run.manifest.data.get("samples", {}).get("status") == "pending" and code != 0:
                run.manifest.data["samples"]["status"] = "not run"
            status = "succeeded" if code == 0 else "stopped" if stop.signal else "failed"
            run.manifest.finish(status, code)
            progress.end(status)
            write_report(Path(plan.run_dir))
            failure = run.manifest.data.get("failure")
            # The last line is what a platform's status page shows: make it the fix when there is one.
            log(f"run {status}; manifest: {run.manifest.path}" + (f"; {failure['hint']}" if failure else ""))
        except BaseException as exc:  # whatever ends the run now, run.json must not say "running" forever
            run.manifest.fail(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            run.lock.release()
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # an explicit command replaces the job (e.g. `bash`, or a platform's own command)
        os.execvp(argv[0], argv)
    deadline = None
    try:
        # The time limit holds in the container itself, even when the launcher's machine is gone.
        deadline = pod.start_deadline(env.max_hours(os.environ), lambda: os.kill(os.getpid(), signal.SIGTERM))
        settings = env.read(os.environ, tensorboard=importlib.util.find_spec("tensorboard") is not None)
        return run_job(settings)
    except UserError as exc:
        return report(exc)
    except INPUT_ERRORS as exc:  # a path or file no check foresaw; other exceptions are bugs and keep a traceback
        if env.debug(os.environ):
            raise
        return report(UserError(input_problem(exc, "LORA_GYM_DEBUG=1")))
    finally:
        if deadline is not None:
            deadline.cancel()
        if env.terminate_pod(os.environ):  # nothing left billing, on success, failure or bad input
            sys.stdout.flush()
            sys.stderr.flush()
            if not pod.terminate_own_pod(os.environ):
                log("could not terminate this pod: stop it with `launcher stop RUN` or RunPod's console")


if __name__ == "__main__":
    sys.exit(main())
