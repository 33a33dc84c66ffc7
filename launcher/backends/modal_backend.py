"""The Modal backend: the pinned registry image as a detached Modal function, found again by its run record.

The platform request is first built as plain data (ModalSpec) from the validated job: `--dry-run` prints it
without importing `modal` or needing a token, and launch_objects turns the same spec into the real
App/Image/Function objects (launcher/backends/modal_app.py). Secrets go in by Modal secret NAME only: their
values live in Modal, never in the spec, the output or the run record.

Volumes: `lora-gym-datasets` holds every dataset file once, at by-sha256/<sha256> (an unchanged dataset
uploads 0 bytes, a changed one only its changed files); each call gets the run's listing (relpath ->
sha256) as an argument and copies it onto its own disk. `lora-gym-cache-<family>` is the cache at /cache
for every run; `lora-gym-outputs` has one folder per run id at /output/<run id>. A stage's writes reach other
containers only through its commit (modal_app.run_stage commits before it returns and reloads when it starts).

No lock keeps two runs apart on the cache volume: Modal has none across containers (modal/volume.py `_Volume` in
the modal 1.6.4 SDK: "nor is distributed file locking supported", last write wins per file), and the entrypoint's
lock file is one only for the containers that see it, which on a Modal volume is none but its maker until it
commits. Within one run the orchestrator orders the stages (cache pass, commit, then trainings). Two runs started
at once over one cache volume may both compute the same cache entry; what keeps that harmless is the entrypoint
writing each entry whole under its content key, so either commit leaves a complete, identical entry.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from launcher import cost
from launcher.backends import Capabilities, LaunchOptions, labels
from launcher.backends.modal_app import (
    BLOBS,
    CACHE_MOUNT,
    DATASETS_MOUNT,
    MAX_TIMEOUT_S,
    OUTPUTS_MOUNT,
    STAGE_ENV,
    WORK_DIR,
)
from launcher.backends.modal_runs import (  # the verbs on a started run
    OUTPUTS_VOLUME,
    first_lines,
    logs,
    now,
    pull,
    status,
    stop,
)
from launcher.backends.modal_timeouts import split_timeouts, timeout_note
from launcher.core.dataset import CAPTION_EXTENSION, file_sha256
from launcher.core.engine_values import modal_volume
from launcher.core.errors import UserError
from launcher.core.job import Job

APP_NAME = "lora-gym"
DATASETS_VOLUME = "lora-gym-datasets"
SECRETS_ENV = "LORA_GYM_MODAL_SECRETS"  # comma list of Modal secret names; default: the HF token's
DEFAULT_SECRETS = "lora-gym-hf"  # `modal secret create lora-gym-hf HF_TOKEN=hf_...`
# A Modal secret for a private image, passed to Image.from_registry(secret=): the SDK reads the kind of login from
# its keys (modal 1.6.4, modal/_image.py _infer_registry_auth_type): REGISTRY_USERNAME + REGISTRY_PASSWORD (GHCR,
# Docker Hub, any other registry), AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY + AWS_REGION (ECR), or
# SERVICE_ACCOUNT_JSON (GCP Artifact Registry); exactly one set.
REGISTRY_SECRET_ENV = "LORA_GYM_MODAL_REGISTRY_SECRET"

# Modal's GPU names: modal.com/docs/guide/gpu ("Specifying GPU type": T4, L4, A10, L40S, A100, A100-40GB,
# A100-80GB, RTX-PRO-6000, H100/H100!, H200, B200/B200+). The SDK sends the string as is (modal 1.6.4,
# modal/_utils/function_utils.py parse_gpu_config upper-cases it), so a retired name such as A10G fails only
# at Modal: this table holds today's names.
# USD per GPU-hour, Modal's base on-demand rates (per-second rate x 3600), each with where it comes from. Region
# pinning and non-preemptible multipliers raise these; they are not applied.
PRICE_SOURCE = "modal.com/pricing 2026-05-07"  # H100, A100-80GB, L40S, L4: as listed that day, quoted with the
# per-second figures by techbytes.app's "Serverless GPU Pricing Matrix" (found with the search tool on
# 2026-11-24; modal.com itself was not reachable from here).
PRICE_SOURCES = {"A10": "modal.com/pricing as last seen in 2025 (then named A10G), not verified for 2026",
                 "H200": "modal.com/pricing as last seen in 2025, not verified for 2026"}
PRICES = {"H100": 3.9492, "A100-80GB": 2.4984, "L40S": 1.9512, "L4": 0.7992, "A10": 1.1016, "H200": 4.5396}
GPU_MEMORY_GB = {"H100": 80, "A100-80GB": 80, "H200": 141, "L40S": 48, "L4": 24, "A10": 24}
# Per preset GPU class (resources.gpu_memory_gb), the smallest class that fits. 80 GB: H100 over the cheaper
# A100-80GB, as it trains a 14B DiT about twice as fast (fewer GPU-hours); 24 GB: L4, the cheapest 24 GB GPU.
DEFAULT_GPU = ((24, "L4"), (48, "L40S"), (80, "H100"), (141, "H200"))
FIRST_LINES = 10
FIRST_LINES_WAIT_S = 90.0  # a cold start pulls the image: wait this long (between lines) for the first ones

@dataclass(frozen=True)
class Call:
    function: str  # a name in modal_app.STAGE_FUNCTIONS
    env: dict[str, str]


@dataclass(frozen=True)
class ModalSpec:
    run_id: str
    image: str
    gpu: str
    timeout_s: int  # of each training (of the one call, without an orchestrator)
    volumes: dict[str, str]  # mount path -> volume name
    secrets: tuple[str, ...]  # Modal secret names
    calls: tuple[Call, ...]
    dataset: dict[str, str]  # relpath -> sha256
    preset_toml: str | None = None
    registry_secret: str | None = None
    app_name: str = APP_NAME
    memory_mib: int | None = None  # host RAM for the GPU stages: block swap and activation offload live there
    orchestrator: str = "both"  # the CPU function over several calls (modal_app.ORCHESTRATORS): both, sweep
    sizes: dict[str, int] = field(default_factory=dict, repr=False)  # sha256 -> bytes, for the upload only
    # With an orchestrator (split_timeouts): the cache pass's timeout, each stage's start-up limit, its own.
    cache_timeout_s: int | None = None
    samples_timeout_s: int | None = None  # `both`'s samples stage, after both trainings
    startup_timeout_s: int | None = None
    orchestrator_timeout_s: int | None = None


# --- the request as data ---------------------------------------------------------------------------------

def choose_gpu(job: Job, options: LaunchOptions) -> str:
    need = job.plan.resources.gpu_memory_gb
    if options.gpu_type:
        gpu = options.gpu_type.upper()
        if gpu not in GPU_MEMORY_GB:
            raise UserError(f"--gpu {options.gpu_type} is not one this launcher prices: use one of "
                            f"{', '.join(GPU_MEMORY_GB)}")
        if GPU_MEMORY_GB[gpu] < need:
            raise UserError(f"--gpu {gpu} has {GPU_MEMORY_GB[gpu]} GB, the preset needs {need} GB: pick one of "
                            f"{', '.join(g for g, m in GPU_MEMORY_GB.items() if m >= need)}")
        return gpu
    fits = [gpu for memory, gpu in DEFAULT_GPU if memory >= need]
    if not fits:
        raise UserError(f"the preset needs {need} GB of GPU memory, more than any Modal GPU priced here: lower "
                        "resources.gpu_memory_gb with --set if the model fits")
    return fits[0]


def gpu_count(job: Job) -> int:
    # the two experts of `both` train at the same time, each on the run's resources.gpus
    return (2 if job.plan.expert == "both" else 1) * job.plan.resources.gpu_count


def gpu_request(job: Job, options: LaunchOptions) -> str:
    """Modal's gpu argument: `H100`, or `H100:2` for a data-parallel run on 2 GPUs of one container."""
    count = job.plan.resources.gpu_count
    return choose_gpu(job, options) + (f":{count}" if count > 1 else "")


def quote(job: Job, options: LaunchOptions) -> cost.Quote:
    gpu = choose_gpu(job, options)
    return cost.Quote(gpu, PRICES[gpu], gpus=gpu_count(job), source=PRICE_SOURCES.get(gpu, PRICE_SOURCE),
                      parallel=2 if job.plan.expert == "both" else 1)


def timeout_s(job: Job, options: LaunchOptions) -> int:
    if options.max_hours and options.max_hours * 3600 > MAX_TIMEOUT_S:
        raise UserError(f"--max-hours {options.max_hours:g} is over Modal's 24 h limit for one function: "
                        "use --max-hours 24 or less (or --backend runpod)")
    hours = cost.hour_limit(options.max_hours, job.plan.resources.time_limit_hours, options.max_cost,
                            quote(job, options))
    return max(60, min(MAX_TIMEOUT_S, int(hours * 3600)))


def image_ref(job: Job, options: LaunchOptions) -> str:
    return labels.cloud_image(options.image, job.loaded.preset.family, "Modal")


def cache_volume(job: Job, options: LaunchOptions) -> str:
    return modal_volume(options.cache_volume or f"lora-gym-cache-{job.loaded.preset.family}")


def check(job: Job, options: LaunchOptions) -> None:
    """What Modal would refuse of this run, checked without Modal: the image, the cache volume, GPU and timeout."""
    image_ref(job, options)
    cache_volume(job, options)
    gpu_request(job, options)
    timeout_s(job, options)


def dataset_files(root: str | Path, job: Job) -> dict[str, tuple[str, int]]:
    """relpath -> (sha256, size) of every media file and caption the plan reads."""
    root, files = Path(root), {}
    for media_dir in job.layout.dirs:
        for name in media_dir.files:
            for rel in (Path(media_dir.relpath) / name, Path(media_dir.relpath) / Path(name).with_suffix(
                    CAPTION_EXTENSION)):
                files[rel.as_posix()] = (file_sha256(root / rel), (root / rel).stat().st_size)
    return files


def secret_names() -> tuple[str, ...]:
    return tuple(n.strip() for n in os.environ.get(SECRETS_ENV, DEFAULT_SECRETS).split(",") if n.strip())


def stage_calls(job: Job, run_id: str, preset: str, image: str) -> tuple[Call, ...]:
    env = {"LORA_GYM_PRESET": preset, "LORA_GYM_IMAGE": image, **STAGE_ENV}  # the image: for run.json
    if job.loaded.overrides:
        env["LORA_GYM_SET"] = shlex.join(job.loaded.overrides)
    if job.plan.expert != "both":  # one call: the run folder is /output/<run id>
        expert = {"LORA_GYM_EXPERT": job.plan.expert} if job.plan.expert else {}
        return (Call("train", env | expert | {"LORA_GYM_OUTPUT_DIR": OUTPUTS_MOUNT, "LORA_GYM_RUN_ID": run_id}),)
    # The calls share /output/<run id>/, each in its own folder (cache, high, low). Neither training container sees
    # the other's LoRAs (a commit shows only after a reload), so each names the other's folder and leaves the pair's
    # samples to a samples stage in the low expert's folder, once both have committed (modal_app.both).
    folder = f"{OUTPUTS_MOUNT}/{run_id}"
    shared = env | {"LORA_GYM_OUTPUT_DIR": folder}
    train = shared | {"LORA_GYM_STAGE": "train"}
    high = train | {"LORA_GYM_EXPERT": "high", "LORA_GYM_RUN_ID": "high", "LORA_GYM_PAIR_DIR": f"{folder}/low"}
    low = train | {"LORA_GYM_EXPERT": "low", "LORA_GYM_RUN_ID": "low", "LORA_GYM_PAIR_DIR": f"{folder}/high"}
    calls = (Call("cache", shared | {"LORA_GYM_EXPERT": "both", "LORA_GYM_STAGE": "cache", "LORA_GYM_RUN_ID": "cache"}),
             Call("train_high", high), Call("train_low", low))
    sampled = job.plan.samples is not None and bool(job.plan.samples.steps)
    return calls + ((Call("samples", low | {"LORA_GYM_STAGE": "samples"}),) if sampled else ())


def modal_spec(job: Job, options: LaunchOptions) -> ModalSpec:
    origin = job.loaded.origin
    is_file = Path(origin).is_file()
    preset = f"{WORK_DIR}/presets/{Path(origin).stem}.toml" if is_file else origin
    run_id = options.run_id or job.plan.run_id
    files = dataset_files(options.dataset, job)
    volumes = {DATASETS_MOUNT: DATASETS_VOLUME, CACHE_MOUNT: cache_volume(job, options), OUTPUTS_MOUNT: OUTPUTS_VOLUME}
    calls, limit = stage_calls(job, run_id, preset, image_ref(job, options)), timeout_s(job, options)
    samples = any(c.function == "samples" for c in calls)
    timeouts = split_timeouts(limit, samples) if len(calls) > 1 else {"timeout_s": limit}
    return ModalSpec(run_id=run_id, image=image_ref(job, options), gpu=gpu_request(job, options),
                     memory_mib=job.plan.resources.host_memory_gb * 1024 or None,
                     volumes=volumes, secrets=secret_names(), **timeouts,
                     calls=calls, dataset={rel: sha for rel, (sha, _) in files.items()},
                     preset_toml=Path(origin).read_text(encoding="utf-8") if is_file else None,
                     registry_secret=os.environ.get(REGISTRY_SECRET_ENV) or None,
                     sizes={sha: size for sha, size in files.values()})


def render(spec: ModalSpec) -> str:
    """The exact request as JSON: what `launch` creates and calls, with secret names and no secret values."""
    return json.dumps(spec_data(spec), indent=2)


def top_call(spec: ModalSpec) -> str:
    """The run's one top-level call (modal_app.spawn), as the dry run shows it."""
    args = "dataset, preset_toml, volumes"
    if len(spec.calls) == 1:
        return f"{spec.calls[0].function}.spawn(env, {args})"
    if spec.orchestrator == "both":
        samples = ", (samples, env)" if len(spec.calls) > 3 else ""
        return (f"both.spawn([(cache, env), (train_high, env), (train_low, env){samples}], {args}): cache, then "
                "train_high and train_low at once" + (", then samples (both LoRAs)" if samples else ""))
    caches = sum(c.function == "cache" for c in spec.calls)
    return (f"sweep.spawn([{caches} x (cache, env), {len(spec.calls) - caches} x (train, env)], {args}): the cache "
            "passes, then every training at once")


def spec_data(spec: ModalSpec) -> dict:
    data = asdict(spec)
    data.pop("sizes")
    data["dataset"] = {"volume_path": f"{DATASETS_MOUNT}/{BLOBS}/<sha256>", "files": len(spec.dataset),
                       "bytes": sum(spec.sizes.values()), "listing": spec.dataset}
    data["preset_toml"] = f"<{len(spec.preset_toml)} characters>" if spec.preset_toml else None
    data["platform_calls"] = [f"Volume.from_name({DATASETS_VOLUME!r}).batch_upload(): missing files only",
                              f"App({spec.app_name!r}).run(detach=True)", top_call(spec)]
    data["in_each_stage"] = (f"Volume.reload() of its volumes, the entrypoint, Volume.commit() of {CACHE_MOUNT} and "
                             f"{OUTPUTS_MOUNT} before it returns")
    data["timeouts"] = timeout_note(spec)
    return data


# --- the platform (modal imported only here, when a run is launched) --------------------------------------

def launch(job: Job, options: LaunchOptions) -> int:
    from launcher import runs
    from launcher.backends import modal_app

    spec = modal_spec(job, options)  # bad options fail before Modal is touched
    price = quote(job, options)
    ids = modal_app.start(spec, options.dataset, DATASETS_VOLUME)
    record = {"run_id": spec.run_id, "backend": "modal", "preset": job.loaded.preset.name, "expert": job.plan.expert,
              "created_at": now(), "image": spec.image, "gpu": price.gpu, "gpus": price.gpus,
              "usd_per_hour": price.usd_per_hour, "timeout_s": spec.timeout_s, "outputs_volume": OUTPUTS_VOLUME,
              "calls": [c.function for c in spec.calls], **ids}
    runs.save(record)  # ids and names only: runs.save refuses any secret value
    print(f"run {spec.run_id} started on Modal (app {ids['app_id']})", file=sys.stderr)
    if options.follow:
        return logs(record, follow=True)
    first_lines(record, FIRST_LINES, FIRST_LINES_WAIT_S)
    print(f"detached: `launcher logs {spec.run_id} --follow`, `launcher status {spec.run_id}`, "
          f"`launcher pull {spec.run_id} DIR` once it is done", file=sys.stderr)
    return 0


class ModalBackend:
    capabilities = Capabilities(name="modal", max_runtime_hours=24, detach=True)

    def check(self, job: Job, options: LaunchOptions) -> None:
        check(job, options)

    def dry_run_data(self, job: Job, options: LaunchOptions) -> dict:
        return spec_data(modal_spec(job, options))

    def dry_run(self, job: Job, options: LaunchOptions) -> str:
        return render(modal_spec(job, options))

    def quote(self, job: Job, options: LaunchOptions) -> cost.Quote:
        return quote(job, options)

    def launch(self, job: Job, options: LaunchOptions) -> int:
        return launch(job, options)

    def status(self, record: dict) -> dict:
        return status(record)

    def logs(self, record: dict, follow: bool) -> int:
        return logs(record, follow)

    def stop(self, record: dict) -> int:
        return stop(record)

    def pull(self, record: dict, dest: str) -> int:
        return pull(record, dest)
