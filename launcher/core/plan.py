"""The plan: a pure function from (preset, expert, dataset layout, container paths) to exact steps.

`make_plan` touches no disk, network or clock. Its output (every step's complete argv, the musubi
dataset TOML, the weight files, resources and output names) is what `launcher run --dry-run` prints,
what golden tests pin, and what the container entrypoint executes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import tomli_w

from launcher import contract
from launcher.core import fit, memory, samples
from launcher.core.dataset import CAPTION_EXTENSION, DatasetLayout, MediaDir
from launcher.core.errors import UserError
from launcher.core.samples import SamplesPlan
from launcher.core.schema import EXPERTS, Expert, Preset

MUSUBI_SCRIPTS = "src/musubi_tuner"
LATENTS_MARKER = ".lora-gym-latents.ok"
TEXT_MARKER = ".lora-gym-text.ok"
MERGE_MARKER = ".lora-gym-merge.ok"
# With train.save_state, musubi keeps this many epoch states (each is the LoRA plus its optimizer state);
# a resumed run needs only the newest complete one, and one more covers a save cut short by a kill.
KEEP_STATES = 2


@dataclass(frozen=True)
class ContainerPaths:
    """Where things are inside the container (the entrypoint's environment contract fills these)."""

    dataset: str = "/dataset"
    output: str = "/output"
    cache: str = "/cache"
    weights: str = "/weights"
    musubi: str = "/opt/musubi-tuner"
    python: str = "python"
    tensorboard: bool = True  # whether the image has the tensorboard package


@dataclass(frozen=True)
class WeightFile:
    role: str
    repo: str
    path: str
    container_path: str
    sha256: str | None = None  # from the weights lock, when one is given
    size: int | None = None


@dataclass(frozen=True)
class Step:
    name: str
    argv: tuple[str, ...]
    # A cache step is skipped when every marker exists; the entrypoint writes them only on success.
    markers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resources:
    gpu_memory_gb: int
    gpu_count: int
    time_limit_hours: float
    host_memory_gb: int = 0  # RAM to ask the platform for: block swap and activation offload live there


@dataclass(frozen=True)
class Plan:
    preset: str
    expert: str | None
    run_id: str
    run_dir: str
    dataset_config_path: str
    dataset_config: str
    steps: tuple[Step, ...]
    weights: tuple[WeightFile, ...]
    resources: Resources
    outputs: tuple[str, ...] = field(default=())
    memory: tuple[fit.Choice, ...] = field(default=())  # per training: the settings chosen to fit, and why
    samples: SamplesPlan | None = None  # None with samples.enabled=false

    def to_json(self) -> dict:
        return asdict(self)


def _num(value: float) -> str:
    """A float as musubi should read it, without binary noise (8e-05 * 0.01 -> '8e-07')."""
    return repr(float(f"{value:.12g}"))


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class _Weights:
    """Weight files by role, with container paths and lock data; identities feed the cache keys."""

    def __init__(self, root: str, lock: Mapping[str, Mapping], locations: Mapping[str, str]):
        self.root, self.lock, self.locations, self.files = root, lock, locations, {}

    def add(self, role: str, ref: str) -> str:
        repo, path = ref.split(":", 1)
        entry = self.lock.get(ref, {})
        where = self.locations.get(ref) or f"{self.root}/{repo}/{path}"
        # A shard is not the whole file: only a file stored whole has the locked size to check against.
        size = entry.get("size") if where.rsplit("/", 1)[-1] == path.rsplit("/", 1)[-1] else None
        self.files[role] = WeightFile(role, repo, path, where, entry.get("sha256"), size)
        return self.files[role].container_path

    def identity(self, role: str) -> str:
        file = self.files[role]
        return file.sha256 or f"{file.repo}:{file.path}"


def _expert_settings(preset: Preset, expert: str | None) -> Expert:
    """The per-model settings as one Expert, also for Wan 2.1 (whose values live in model/train)."""
    if preset.experts is not None:
        return getattr(preset.experts, expert)
    t = preset.train
    return Expert(dit=preset.model.dit, min_timestep=t.min_timestep if t.min_timestep is not None else 0,
                  max_timestep=t.max_timestep or 1000, learning_rate=t.learning_rate,
                  network_dim=t.network_dim, network_alpha=t.network_alpha)


def experts_to_train(preset: Preset, expert: str | None) -> list[str | None]:
    if preset.experts is None:
        if expert is not None:
            raise UserError(f"--expert is only for Wan 2.2 presets; {preset.name} trains one model: "
                            "drop --expert")
        return [None]
    if expert is None:
        raise UserError(f"{preset.name} is a Wan 2.2 preset with two experts: add --expert high, low or both")
    if expert not in (*EXPERTS, "both"):
        raise UserError(f"unknown expert {expert!r}: use high, low or both")
    return list(EXPERTS) if expert == "both" else [expert]


# --- dataset config ------------------------------------------------------------------------------------

def _entries(preset: Preset, layout: DatasetLayout) -> list[tuple[MediaDir, dict]]:
    """Every musubi dataset entry: (media folder, entry settings without paths)."""
    ds, result = preset.dataset, []
    for media in layout.of_kind("image"):
        result.append((media, {"resolution": list(ds.images.resolution), "num_repeats": ds.images.num_repeats}))
    for media in layout.of_kind("video"):
        for video in ds.videos:
            settings = video.model_dump(exclude={"name"}, exclude_none=True)
            settings["resolution"] = list(video.resolution)
            result.append((media, settings))
    return result


def _dataset_config(preset: Preset, layout: DatasetLayout, paths: ContainerPaths, cache_inputs: dict):
    """(TOML text, cache directories): each entry caches into a folder keyed by everything it depends on."""
    ds = preset.dataset
    general = {"caption_extension": CAPTION_EXTENSION, "batch_size": ds.batch_size,
               "enable_bucket": ds.enable_bucket, "bucket_no_upscale": ds.bucket_no_upscale}
    datasets, cache_dirs = [], []
    for media, settings in _entries(preset, layout):
        folder = f"{paths.dataset}/{media.relpath}".rstrip("/")
        key = _key(media.digest, media.kind, settings, general | {"batch_size": None}, cache_inputs)
        cache_dir = f"{paths.cache}/datasets/{key}"
        datasets.append({f"{media.kind}_directory": folder, "cache_directory": cache_dir, **settings})
        cache_dirs.append(cache_dir)
    return tomli_w.dumps({"general": general, "datasets": datasets}), cache_dirs


# --- steps ---------------------------------------------------------------------------------------------

def _script(paths: ContainerPaths, name: str) -> str:
    return f"{paths.musubi}/{MUSUBI_SCRIPTS}/{name}.py"


def _cache_steps(preset: Preset, paths: ContainerPaths, config: str, cache_dirs: list[str], weights: _Weights):
    info = contract.task_info(preset.model.task)
    latents = [paths.python, _script(paths, "wan_cache_latents"), "--dataset_config", config,
               "--vae", weights.files["vae"].container_path]
    if info["needs_i2v_latent_cache"]:
        latents.append("--i2v")
    if info["needs_clip_features"]:
        latents += ["--clip", weights.files["clip"].container_path]
    if preset.cache.vae_cache_cpu:
        latents.append("--vae_cache_cpu")
    text = [paths.python, _script(paths, "wan_cache_text_encoder_outputs"), "--dataset_config", config,
            "--t5", weights.files["t5"].container_path, "--batch_size", str(preset.cache.text_encoder_batch_size)]
    if preset.cache.fp8_t5:
        text.append("--fp8_t5")
    return [Step("cache-latents", tuple(latents), tuple(f"{d}/{LATENTS_MARKER}" for d in cache_dirs)),
            Step("cache-text-encoder", tuple(text), tuple(f"{d}/{TEXT_MARKER}" for d in cache_dirs))]


def _merge_step(expert: str, settings: Expert, paths: ContainerPaths, weights: _Weights) -> tuple[Step, str]:
    dit = weights.add(f"dit-{expert}", settings.dit)
    lora = weights.add(f"lightning-{expert}", settings.lightning.lora)
    strength = settings.lightning.strength
    key = _key(weights.identity(f"dit-{expert}"), weights.identity(f"lightning-{expert}"), strength)
    name = dit.rsplit("/", 1)[-1]  # the first shard's name when the image stores the DiT as shards
    if name != settings.dit.rsplit("/", 1)[-1]:
        key = _key(key, name)  # a merge of shards is written as shards: another folder than the whole file's
    merged_dir = f"{paths.cache}/lightning/{key}"
    merged = f"{merged_dir}/{name}"
    # --overwrite: the marker, not the file, says a merge finished; a file without one is a leftover.
    argv = (paths.python, "-m", "lora_gym_entrypoint.merge", "--dit", dit, "--lora", lora,
            "--strength", _num(strength), "--output", merged, "--overwrite")
    return Step(f"merge-lightning-{expert}", argv, (f"{merged_dir}/{MERGE_MARKER}",)), merged


def _optimizer_args(train, lr: float) -> list[str]:
    args = ["--optimizer_type", train.optimizer_type]
    if train.weight_decay:
        args += ["--optimizer_args", f"weight_decay={_num(train.weight_decay)}"]
    return args + ["--learning_rate", _num(lr)]


def _schedule_args(train, lr: float) -> list[str]:
    args = ["--lr_scheduler", train.lr_scheduler]
    if train.lr_scheduler == "polynomial":
        # musubi ignores --lr_scheduler_min_lr_ratio for polynomial; its floor is lr_end.
        args += ["--lr_scheduler_power", _num(train.lr_scheduler_power),
                 "--lr_scheduler_args", f"lr_end={_num(lr * train.lr_end_ratio)}"]
    if train.lr_warmup_steps:
        args += ["--lr_warmup_steps", str(train.lr_warmup_steps)]
    return args


def _timestep_args(preset: Preset, s: Expert) -> list[str]:
    t = preset.train
    args = ["--timestep_sampling", t.timestep_sampling, "--discrete_flow_shift", _num(t.discrete_flow_shift)]
    if preset.experts is not None or t.min_timestep is not None or t.max_timestep is not None:
        args += ["--min_timestep", str(s.min_timestep), "--max_timestep", str(s.max_timestep)]
        if t.timestep_sampling != "sigma":  # musubi ignores it with sigma sampling
            args.append("--preserve_distribution_shape")
    return args


def _memory_args(preset: Preset, choice: fit.Choice) -> list[str]:
    t = preset.train
    args = [f"--{t.attention}"]
    args += ["--fp8_base"] * choice.fp8_base + ["--fp8_scaled"] * choice.fp8_scaled
    args += ["--gradient_checkpointing"] * t.gradient_checkpointing
    args += ["--gradient_checkpointing_cpu_offload"] * choice.gradient_checkpointing_cpu_offload
    if choice.blocks_to_swap:
        args += ["--blocks_to_swap", str(choice.blocks_to_swap)]
    args += ["--max_data_loader_n_workers", str(t.max_data_loader_n_workers)]
    return args + ["--persistent_data_loader_workers"] * t.persistent_data_loader_workers


def _train_step(preset: Preset, s: Expert, dit: str, name: str, out: tuple[str, str], paths: ContainerPaths,
                config: str, choice: fit.Choice) -> Step:
    t, dtype = preset.train, preset.model.dtype
    gpus = preset.resources.gpus  # data parallel: one process per GPU, each with its own batches
    argv = ["accelerate", "launch", "--num_processes", str(gpus), *["--multi_gpu"] * (gpus > 1), "--num_machines",
            "1", "--dynamo_backend", "no", "--num_cpu_threads_per_process", "1", "--mixed_precision", dtype,
            _script(paths, "wan_train_network"), "--task", preset.model.task, "--dit", dit,
            "--dataset_config", config, "--mixed_precision", dtype, *_memory_args(preset, choice),
            "--network_module", t.network_module, "--network_dim", str(s.network_dim),
            "--network_alpha", _num(s.network_alpha), *_optimizer_args(t, s.learning_rate),
            *_schedule_args(t, s.learning_rate), *_timestep_args(preset, s)]
    if t.gradient_accumulation_steps > 1:
        argv += ["--gradient_accumulation_steps", str(t.gradient_accumulation_steps)]
    argv += ["--max_train_epochs", str(t.max_train_epochs), "--save_every_n_epochs", str(t.save_every_n_epochs),
             "--seed", str(t.seed), "--output_dir", out[0], "--output_name", out[1]]
    if t.save_state:  # what a restarted run resumes from (entrypoint resume.py)
        argv += ["--save_state", "--save_last_n_epochs_state", str(KEEP_STATES)]
    if t.tensorboard and paths.tensorboard:
        argv += ["--log_with", "tensorboard", "--logging_dir", f"{out[0]}/logs"]
    return Step(name, tuple(argv))


def _weights_for(preset: Preset, weights: _Weights) -> dict:
    for role in ("vae", "t5", "clip"):
        ref = getattr(preset.model, role)
        if ref:
            weights.add(role, ref)
    cache_inputs = {"vae": weights.identity("vae"), "t5": weights.identity("t5"), "fp8_t5": preset.cache.fp8_t5,
                    "i2v": contract.task_info(preset.model.task)["needs_i2v_latent_cache"]}
    return cache_inputs | ({"clip": weights.identity("clip")} if preset.model.clip else {})


def _fit_experts(preset: Preset, experts: list[str | None], layout: DatasetLayout) -> dict[str | None, fit.Choice]:
    """The memory settings of each training. The largest LoRA goes first, so that when nothing fits, the one
    error names the shrink that makes every expert fit."""
    loads = fit.loads(preset, [d.kind for d in layout.dirs])
    ranks = {exp: _expert_settings(preset, exp).network_dim for exp in experts}
    return {exp: fit.choose(preset.name, exp, fit.Request.of(preset, ranks[exp]), loads, preset.resources.gpu_memory_gb)
            for exp in sorted(experts, key=lambda e: -ranks[e])}


def _sampling_memory(preset: Preset, choices: dict[str | None, fit.Choice]) -> tuple[fit.Choice, float]:
    """The trainings' most frugal memory settings, which sampling reuses, and the host RAM sampling adds: Wan 2.2
    samples keep the inactive expert's DiT on the CPU (--offload_inactive_dit), which the training fit never held."""
    frugal = max(choices.values(), key=lambda c: (c.blocks_to_swap, c.fp8_base))
    if not (preset.experts and preset.samples.enabled):
        return frugal, 0.0
    return frugal, memory.dit_gb(memory.Shape.of(preset.model.task), frugal.fp8_base)


def _sample_dits(preset: Preset, paths: ContainerPaths, weights: _Weights, dits: dict) -> tuple[list[Step], list]:
    """The DiTs the samples load: the trainings' own, an expert not trained here from its base (merged with its
    Lightning LoRA after training, so that never delays the LoRAs), then each one's key check (samples.dit_keys)."""
    steps = []
    for other in EXPERTS if preset.experts else ():
        settings = getattr(preset.experts, other)
        if other not in dits and settings.lightning:
            merge, dits[other] = _merge_step(other, settings, paths, weights)
            steps.append(merge)
        elif other not in dits:
            dits[other] = weights.add(f"dit-{other}", settings.dit)
    copies = []
    for expert, dit in dits.items():
        base = weights.files.get(f"dit-{expert}" if expert else "dit")
        identity = weights.identity(base.role) if base and base.container_path == dit else dit  # merged: keyed already
        name, argv, marker, copy = samples.dit_keys(expert, dit, _key("dit-keys", identity, dit.rsplit("/", 1)[-1]),
                                                    paths)
        steps.append(Step(name, argv, (marker,)))
        copies.append((dit, copy))
    return steps, copies


def _sample_steps(preset: Preset, layout: DatasetLayout, paths: ContainerPaths, weights: _Weights, dits: dict,
                  loras: dict, fitted: fit.Choice, pair: str | None) -> tuple[list[Step], SamplesPlan | None]:
    """The sample steps after training, and what they need. `pair`: the run folder of the other expert of a
    `both` run trained in another container, whose LoRAs the samples pair with this run's."""
    if not preset.samples.enabled:
        return [], None
    trained, (run_dir, name, last) = list(loras), next(iter(loras.values()))
    folder = f"{run_dir}/{samples.SAMPLES_FOLDER}"
    prompts, prompts_path = samples.sample_prompts(preset, layout, paths.dataset), f"{folder}/prompts.txt"
    if not prompts:
        return [], SamplesPlan(folder, prompts_path, "", (), (), (), samples.no_prompt_note(preset))
    other = pair and {"high": "low", "low": "high"}[trained[0]]
    if pair:
        loras = loras | {other: (pair, name.removesuffix(f"-{trained[0]}") + f"-{other}", last)}
    steps, copies = _sample_dits(preset, paths, weights, dits)
    t = preset.train
    epochs = samples.sampled_epochs(t.max_train_epochs, t.save_every_n_epochs, preset.samples.every)
    for epoch in epochs:
        files = (prompts_path, samples.epoch_folder(folder, epoch))
        steps.append(Step(f"samples-e{epoch:06d}", samples.sample_argv(preset, paths, weights, loras, dits, epoch,
                                                                        files, fitted)))
    partner = tuple(samples.checkpoint(*loras[other][:2], e, last) for e in epochs) if pair else ()
    return steps, SamplesPlan(folder, prompts_path, samples.prompts_file(preset, prompts), prompts, tuple(epochs),
                              tuple(step.name for step in steps), samples.note(preset, trained, pair),
                              tuple(copies), pair, partner)


def make_plan(preset: Preset, expert: str | None, layout: DatasetLayout, run_id: str,
              paths: ContainerPaths | None = None, lock: Mapping[str, Mapping] | None = None,
              locations: Mapping[str, str] | None = None, pair: str | None = None) -> Plan:
    """The complete, validated plan for one run. Pure: the same inputs always give the same plan.

    `locations` ("repo:path" -> container path) overrides `<weights>/<repo>/<path>` for files an image stores
    otherwise (the first of a DiT's shards; a file joined from parts into the cache volume). `pair`: see
    _sample_steps (LORA_GYM_PAIR_DIR).
    """
    paths = paths or ContainerPaths()
    experts = experts_to_train(preset, expert)
    if pair and (len(experts) != 1 or experts[0] is None):
        raise UserError("LORA_GYM_PAIR_DIR names the other expert's run folder of a Wan 2.2 `both` run trained in "
                        "two containers: set LORA_GYM_EXPERT to high or low with it, or leave it empty")
    weights = _Weights(paths.weights, lock or {}, locations or {})
    run_dir = f"{paths.output}/{run_id}"
    config_path = f"{run_dir}/dataset.toml"
    config_text, cache_dirs = _dataset_config(preset, layout, paths, _weights_for(preset, weights))
    steps = _cache_steps(preset, paths, config_path, cache_dirs, weights)
    outputs, dits, loras = [], {}, {}
    base_name = preset.output_name or preset.name
    choices = _fit_experts(preset, experts, layout)
    for exp in experts:
        settings = _expert_settings(preset, exp)
        suffix = f"-{exp}" if exp else ""
        if settings.lightning:
            merge, dit = _merge_step(exp, settings, paths, weights)
            steps.append(merge)
        else:
            dit = weights.add(f"dit{suffix}", settings.dit)
        name = base_name + suffix
        steps.append(_train_step(preset, settings, dit, f"train{suffix}", (run_dir, name), paths, config_path,
                                 choices[exp]))
        outputs.append(f"{run_dir}/{name}.safetensors")
        dits[exp], loras[exp] = dit, (run_dir, name, preset.train.max_train_epochs)
    frugal, inactive_dit_gb = _sampling_memory(preset, choices)
    sample_steps, samples_plan = _sample_steps(preset, layout, paths, weights, dits, loras, frugal, pair)
    # Each data-parallel process keeps its own swapped blocks and offloaded activations in host RAM; sampling
    # (one process, after training) holds the inactive Wan 2.2 expert there instead.
    gpus, trained_host = preset.resources.gpus, max(c.estimated_host_gb for c in choices.values())
    host = memory.host_request_gb(max(trained_host * gpus, trained_host + inactive_dit_gb))
    resources = Resources(preset.resources.gpu_memory_gb, gpus, preset.resources.time_limit_hours, host)
    plan = Plan(preset.name, expert, run_id, run_dir, config_path, config_text, (*steps, *sample_steps),
                tuple(weights.files.values()), resources, tuple(outputs), tuple(choices[e] for e in experts),
                samples_plan)
    from launcher.core.checks import verify_plan  # local: checks imports this module

    verify_plan(plan, preset)
    return plan
