"""The Modal side of `--backend modal`: the real App/Image/Function objects built from a ModalSpec, and the
function bodies that run inside the image on Modal.

Modal imports this module inside the container to find the functions, so it imports only the standard
library at the top: `modal` is imported inside `build` and `both`, and nothing from launcher.core (the
image's own copy of LoRA Gym runs the plan, through its entrypoint, exactly as `--backend local` does).
The functions are plain module-level functions registered on a fresh App per run by `build`, which Modal
supports ("not decorated in global scope"): the spec (GPU, timeout) is per run, not per import.

Volumes: a container sees the volume as it was when the container started, plus its own writes; other containers
see those writes only after this one commits, and it sees theirs only after it reloads (modal.com/docs/guide/volumes,
"Volume commits and reloads"; modal/volume.py `_Volume`, `commit`, `reload` in the modal 1.6.4 SDK). So every stage
reloads its volumes first (a warm container reused for a later call keeps its old view otherwise) and commits the
volumes it wrote before it returns: `both` and `sweep` spawn the trainings as soon as the cache pass returns, and
the trainings must find its cache. The handles travel as call arguments (Modal passes Volume objects by id, as it
does the Function handles `both` gets) so that no lookup by name, in whichever environment, is needed.
Modal offers no lock across containers (`_Volume`: "nor is distributed file locking supported"; last write wins
per file): one run keeps its stages apart by order (cache pass, commit, then trainings); two runs at once over one
cache volume are kept apart by nothing here, only by the entrypoint writing each cache entry whole, by content key.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ENTRYPOINT = "lora-gym-entrypoint"
DATASETS_MOUNT = "/datasets"  # the datasets volume: every file once, at by-sha256/<sha256>
OUTPUTS_MOUNT = "/output"
CACHE_MOUNT = "/cache"
BLOBS = "by-sha256"
WORK_DIR = "/tmp/lora-gym"  # container-local: the run's dataset listing and preset file
# Every stage's paths, and no cache-folder lock: a Modal volume has no exclusive create across containers
# ("nor is distributed file locking supported", modal/volume.py _Volume), so the entrypoint's cache steps rely
# on staging and whole-file publishing instead (entrypoints/cacheshare.py).
STAGE_ENV = {"LORA_GYM_DATASET_DIR": f"{WORK_DIR}/dataset", "LORA_GYM_CACHE_DIR": CACHE_MOUNT,
             "LORA_GYM_CACHE_LOCK": "none"}
MAX_TIMEOUT_S = 24 * 3600  # Modal's limit for one function execution
ORCHESTRATOR_CPU = 0.25  # `both` only waits on the GPU calls
WRITTEN_MOUNTS = (CACHE_MOUNT, OUTPUTS_MOUNT)  # what a stage writes (the datasets volume only the launcher does)


class StageFailed(RuntimeError):
    """A step of the run exited non-zero: the Modal function fails with it, so a failed training never looks
    like a successful function call. Built from plain args so it pickles back to the launcher."""

    def __init__(self, stage: str, exit_code: int):
        super().__init__(stage, exit_code)
        self.stage, self.exit_code = stage, exit_code

    def __str__(self) -> str:
        return f"{ENTRYPOINT} ({self.stage}) exited with code {self.exit_code}"


# --- inside the container --------------------------------------------------------------------------------

def materialize(dataset: dict[str, str], target: Path, blobs: Path) -> None:
    """The run's dataset folder, copied onto the container's own disk from the content-addressed volume: the
    entrypoint checks the same bytes the launcher planned with (so cache keys match the dry-run). Copies, not
    symlinks: the entrypoint's dataset check refuses a link out of the dataset folder (launcher/core/dataset.py
    _link_problem), and the container's disk and the volume are two filesystems (no hard links). A file already
    there (a warm container's earlier call of the same run) is kept."""
    for relpath, sha in dataset.items():
        path = target / relpath
        if path.is_file() and path.stat().st_size == (blobs / sha).stat().st_size:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        shutil.copyfile(blobs / sha, partial)
        os.replace(partial, path)


def child_env(env: dict[str, str]) -> dict[str, str]:
    """The container's environment (Modal puts the secrets' variables there) plus the run's contract.
    PYTHONPATH is dropped: Modal mounts this launcher's source for the function, and the entrypoint must
    use the image's own LoRA Gym, whose contract label the image was built and checked with."""
    base = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return base | env


def reload(volumes: dict) -> None:
    """Every mounted volume as last committed, whoever committed it."""
    for volume in volumes.values():
        volume.reload()


def commit(volumes: dict) -> None:
    """This container's writes to the volumes a stage writes, made visible to every container started or
    reloaded after this (modal/volume.py `commit`: "available to other containers accessing the volume")."""
    for mount in WRITTEN_MOUNTS:
        if mount in volumes:
            volumes[mount].commit()


def run_stage(env: dict[str, str], dataset: dict[str, str], preset_toml: str | None = None,
              volumes: dict | None = None, *, blobs: str | Path = f"{DATASETS_MOUNT}/{BLOBS}", out=None) -> dict:
    """Run the image's entrypoint for one stage between a volume reload and a commit (the commit also when the
    stage failed: its run folder's logs and run.json are what `launcher pull` shows); StageFailed on a
    non-zero exit. `volumes`: {mount path: modal.Volume} of this function's mounts."""
    volumes = volumes or {}
    reload(volumes)
    try:
        return _entrypoint(env, dataset, preset_toml, Path(blobs), out or sys.stdout)
    finally:
        commit(volumes)


def _entrypoint(env: dict[str, str], dataset: dict[str, str], preset_toml: str | None, blobs: Path, out) -> dict:
    materialize(dataset, Path(env["LORA_GYM_DATASET_DIR"]), blobs)
    if preset_toml is not None:  # a user's preset file travels as text, to where LORA_GYM_PRESET points
        Path(env["LORA_GYM_PRESET"]).parent.mkdir(parents=True, exist_ok=True)
        Path(env["LORA_GYM_PRESET"]).write_text(preset_toml, encoding="utf-8")
    Path(env.get("LORA_GYM_OUTPUT_DIR", OUTPUTS_MOUNT)).mkdir(parents=True, exist_ok=True)
    stage = env.get("LORA_GYM_STAGE") if env.get("LORA_GYM_STAGE") in ("cache", "samples") else \
        env.get("LORA_GYM_EXPERT") or "train"
    proc = subprocess.Popen([ENTRYPOINT], env=child_env(env), cwd="/", stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1)
    for line in proc.stdout:  # line by line, so Modal's log stream shows each [step] line as it happens
        out.write(line)
        out.flush()
    code = proc.wait()
    if code != 0:
        raise StageFailed(stage, code)
    return {"stage": stage, "exit_code": 0, "run_dir": env.get("LORA_GYM_OUTPUT_DIR", OUTPUTS_MOUNT)}


# One module-level function per stage, so `status` can tell the calls apart by function name.
def train(env: dict, dataset: dict, preset_toml: str | None = None, volumes: dict | None = None) -> dict:
    return run_stage(env, dataset, preset_toml, volumes)


def cache(env: dict, dataset: dict, preset_toml: str | None = None, volumes: dict | None = None) -> dict:
    return run_stage(env, dataset, preset_toml, volumes)


def train_high(env: dict, dataset: dict, preset_toml: str | None = None, volumes: dict | None = None) -> dict:
    return run_stage(env, dataset, preset_toml, volumes)


def train_low(env: dict, dataset: dict, preset_toml: str | None = None, volumes: dict | None = None) -> dict:
    return run_stage(env, dataset, preset_toml, volumes)


def samples(env: dict, dataset: dict, preset_toml: str | None = None, volumes: dict | None = None) -> dict:
    return run_stage(env, dataset, preset_toml, volumes)


STAGE_FUNCTIONS = {"train": train, "cache": cache, "train_high": train_high, "train_low": train_low,
                   "samples": samples}


def both(calls: list, dataset: dict, preset_toml: str | None = None, volumes: dict | None = None) -> list:
    """`--expert both`: the cache pass first (one GPU), then both experts at once (two GPUs), then the samples of
    the pair (one GPU). Runs on a small CPU container; `calls` holds (Function, env) pairs, Modal passing the
    Function handles by id. Each stage has committed its volumes when its result arrives (run_stage), so the next
    wave's new containers mount them with the cache, then both experts' LoRAs, in them."""
    import modal

    (first, first_env), rest = calls[0], calls[1:]
    trainings = [(fn, env) for fn, env in rest if env.get("LORA_GYM_STAGE") != "samples"]
    results = [first.spawn(first_env, dataset, preset_toml, volumes).get()]  # StageFailed if caching failed
    spawned = [fn.spawn(env, dataset, preset_toml, volumes) for fn, env in trainings]
    results += list(modal.FunctionCall.gather(*spawned))  # a failed training fails the run: no samples
    for fn, env in rest[len(trainings):]:
        try:
            results.append(fn.spawn(env, dataset, preset_toml, volumes).get())
        except Exception as exc:  # noqa: BLE001 - both LoRAs are done and committed: the samples never fail the run
            print(f"both: the samples stage ended early ({type(exc).__name__}: {exc}); the LoRAs are done", flush=True)
    return results


def sweep(calls: list, dataset: dict, preset_toml: str | None = None, volumes: dict | None = None) -> list:
    """`launcher sweep`: every cache pass (LORA_GYM_STAGE=cache) at once, then every training at once. A failed
    cache pass stops the sweep; a failed training does not stop the others, and fails the sweep at the end."""
    caches = [(fn, env) for fn, env in calls if env.get("LORA_GYM_STAGE") == "cache"]
    trainings = [(fn, env) for fn, env in calls if env.get("LORA_GYM_STAGE") != "cache"]
    results = [call.get() for call in [fn.spawn(env, dataset, preset_toml, volumes) for fn, env in caches]]
    spawned = [(env.get("LORA_GYM_RUN_ID", ""), fn.spawn(env, dataset, preset_toml, volumes)) for fn, env in trainings]
    failed = []
    for run_id, call in spawned:
        try:
            results.append(call.get())
        except StageFailed as exc:
            failed.append(exc.exit_code)
            print(f"sweep: {run_id} failed ({exc})", flush=True)
    if failed:
        raise StageFailed(f"{len(failed)} of {len(spawned)} sweep runs", failed[0])
    return results


ORCHESTRATORS = {"both": both, "sweep": sweep}


# --- on the launcher's machine ---------------------------------------------------------------------------

def image(spec):
    import modal

    secret = modal.Secret.from_name(spec.registry_secret) if spec.registry_secret else None
    return modal.Image.from_registry(spec.image, secret=secret)


def build(spec):
    """(App, {name: Function}, {mount path: Volume}) for the spec; offline, nothing is created until the app
    runs. Timeouts: see modal_backend.split_timeouts."""
    import modal

    app = modal.App(spec.app_name)
    volumes = {path: modal.Volume.from_name(name, create_if_missing=True) for path, name in spec.volumes.items()}
    secrets = [modal.Secret.from_name(name) for name in spec.secrets]
    common = {"image": image(spec), "secrets": secrets}
    functions = {}
    for call in spec.calls:
        own = {"cache": spec.cache_timeout_s, "samples": spec.samples_timeout_s}.get(call.function)
        timeout = own or spec.timeout_s
        # memory: Modal's request in MiB (a floor the container is scheduled with, not a cap). startup_timeout:
        # None leaves Modal's default (the timeout bounds the start-up too: modal/app.py `function`).
        functions[call.function] = app.function(gpu=spec.gpu, timeout=timeout, startup_timeout=spec.startup_timeout_s,
                                                memory=spec.memory_mib, volumes=volumes, **common)(
            STAGE_FUNCTIONS[call.function])
    if len(spec.calls) > 1:  # the orchestrator only passes the volume handles on: it mounts none
        name = spec.orchestrator
        functions[name] = app.function(cpu=ORCHESTRATOR_CPU, timeout=spec.orchestrator_timeout_s or MAX_TIMEOUT_S,
                                       **common)(ORCHESTRATORS[name])
    return app, functions, volumes


def spawn(spec, functions: dict, volumes: dict):
    """The run's one top-level call: the stage itself, or the orchestrator (`both`, `sweep`) over the stages.
    `volumes` go along as arguments: each stage commits and reloads through them (run_stage)."""
    args = (spec.dataset, spec.preset_toml, volumes)
    if len(spec.calls) == 1:
        return functions[spec.calls[0].function].spawn(spec.calls[0].env, *args)
    pairs = [(functions[c.function], c.env) for c in spec.calls]
    return functions[spec.orchestrator].spawn(pairs, *args)


def _progress(total: int):
    """A byte progress bar on stderr: tqdm when installed, else a line per batch."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr, desc="upload dataset")
    except ImportError:
        class Lines:
            done = 0

            def update(self, n):
                self.done += n
                print(f"upload dataset: {self.done}/{total} bytes", file=sys.stderr)

            def close(self):
                pass
        return Lines()


UPLOAD_BATCH_BYTES = 256 << 20  # one volume commit per batch: progress moves, and a failure loses little


def upload_dataset(volume, root: str | Path, files: dict[str, tuple[str, int]]) -> int:
    """Upload the files whose sha256 is not yet at by-sha256/ on the volume; the bytes sent (0 when the
    dataset is unchanged). `volume` is a modal.Volume, or a test double with listdir and batch_upload."""
    try:
        have = {Path(entry.path).name for entry in volume.listdir(BLOBS)}
    except Exception as exc:  # a new volume has no by-sha256/ yet: modal raises NotFoundError
        if type(exc).__name__ != "NotFoundError":
            raise
        have = set()
    missing: dict[str, tuple[str, int]] = {}
    for relpath, (sha, size) in sorted(files.items()):
        if sha not in have:
            missing.setdefault(sha, (relpath, size))  # identical files go up once
    total = sum(size for _, size in missing.values())
    if not missing:
        return 0
    bar, batch, batch_bytes = _progress(total), [], 0
    for sha, (relpath, size) in missing.items():
        batch.append((sha, relpath))
        batch_bytes += size
        if batch_bytes >= UPLOAD_BATCH_BYTES or sha == next(reversed(missing)):
            # force: a parallel launch may have put the same content meanwhile; it is the same bytes
            with volume.batch_upload(force=True) as upload:
                for blob, rel in batch:
                    upload.put_file(Path(root) / rel, f"{BLOBS}/{blob}")
            bar.update(batch_bytes)
            batch, batch_bytes = [], 0
    bar.close()
    return total


def has_token() -> bool:
    from modal.config import config

    return bool(config.get("token_id") and config.get("token_secret"))


def start(spec, dataset_root: str | Path, datasets_volume: str) -> dict:
    """Upload the dataset, start the app detached and spawn the run's call: the ids for the run record."""
    import modal

    from launcher.core.errors import UserError

    if not has_token():
        raise UserError("no Modal token configured: run `modal token new` (or set MODAL_TOKEN_ID and "
                        "MODAL_TOKEN_SECRET)")
    files = {rel: (sha, spec.sizes.get(sha, 0)) for rel, sha in spec.dataset.items()}
    upload_dataset(modal.Volume.from_name(datasets_volume, create_if_missing=True), dataset_root, files)
    app, functions, volumes = build(spec)
    # detach: the app keeps running after this process exits, until its calls end (or `launcher stop`).
    with app.run(detach=True):
        for volume in volumes.values():  # a handle passed as an argument must be hydrated (modal/_serialization.py)
            volume.hydrate()
        call = spawn(spec, functions, volumes)
    return {"app_id": app.app_id, "call_id": call.object_id}
