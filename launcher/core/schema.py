"""The one strict schema every preset (shipped or user-made) must satisfy.

Field paths are exactly the keys a user types in `--set` (`experts.high.learning_rate=5e-5`).
Pydantic checks types and ranges; `cross_checks` adds the rules that span fields and need the
musubi-tuner contract (CLIP only for Wan 2.1 I2V, block-swap limits, per-expert settings, ...).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from launcher import contract
from launcher.core.inputs import SAFE_NAME

# "owner/repo:path/inside/repo.safetensors", the identity of one Hugging Face file.
HUB_FILE = re.compile(r"^[\w.-]+/[\w.-]+:[^:\s]+$")
HubFile = Annotated[str, Field(pattern=HUB_FILE.pattern)]
PRESET_NAME = r"^[a-z0-9][a-z0-9._-]{0,99}$"
VIDEO_ENTRY_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
OUTPUT_NAME = f"^{SAFE_NAME.pattern}$"
# What each pattern asks for, in words: an error names the rule of the field it is about.
PATTERN_MESSAGES = {
    HUB_FILE.pattern: "use a Hugging Face file as owner/repo:path/in/repo.safetensors",
    PRESET_NAME: "use up to 100 lower-case ASCII letters, digits, '_', '.' and '-', starting with a letter or digit",
    VIDEO_ENTRY_NAME: "use up to 64 lower-case ASCII letters, digits, '_' and '-', starting with a letter or digit",
    OUTPUT_NAME: "use ASCII letters, digits, '_', '.' and '-', starting with a letter or digit",
}
# musubi buckets at most 4096 pixels a side in practice; beyond that no GPU holds one frame.
Size = Annotated[int, Field(gt=0, le=4096, multiple_of=16)]
# Upper bounds that hold every real run with room to spare; beyond them a value is a typo or an attack
# (musubi passes seeds to numpy, which refuses 2**32 and above).
MAX_SEED = 2**32 - 1
MAX_RANK = 4096
MAX_EPOCHS = 10_000
MAX_REPEATS = 10_000
MAX_FRAMES = 1_025
SUPPORTED_TASKS = ("t2v-A14B", "i2v-A14B", "t2v-14B", "t2v-1.3B", "i2v-14B")
EXPERTS = ("high", "low")


def _frames(n: int) -> int:
    if n < 1 or (n - 1) % 4:
        lower = max(1, (n - 1) // 4 * 4 + 1)
        raise ValueError(f"{n} frames is not 4N+1 (the Wan VAE packs 4 frames per latent): use {lower}")
    return n


class Strict(BaseModel):
    # Every float must be finite: `inf` slips past gt/le checks and nan fails every comparison.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Lightning(Strict):
    """A distillation LoRA merged into the DiT (in its fp16/bf16 weights) before training."""

    lora: HubFile
    strength: float = Field(1.0, gt=0, le=10)


class Expert(Strict):
    """Everything that differs between the Wan 2.2 high-noise and low-noise experts."""

    dit: HubFile
    min_timestep: int = Field(ge=0, le=999)
    max_timestep: int = Field(ge=1, le=1000)
    learning_rate: float = Field(gt=0, le=1)
    network_dim: int = Field(gt=0, le=MAX_RANK)
    network_alpha: float = Field(gt=0, le=MAX_RANK)
    lightning: Lightning | None = None


class Experts(Strict):
    high: Expert
    low: Expert


class Model(Strict):
    task: Literal[SUPPORTED_TASKS]  # type: ignore[valid-type]
    dtype: Literal["bf16", "fp16"] = Field(description="dtype of the DiT file; musubi needs it to match")
    # None: 16-bit weights when they fit resources.gpu_memory_gb, else fp8 (launcher/core/fit.py decides).
    fp8_base: bool | None = None
    fp8_scaled: bool = False
    dit: HubFile | None = Field(None, description="Wan 2.1 only; Wan 2.2 sets experts.<e>.dit")
    # Wan 2.2 A14B uses the Wan 2.1 VAE; one T5 serves every Wan task.
    vae: HubFile = "Comfy-Org/Wan_2.1_ComfyUI_repackaged:split_files/vae/wan_2.1_vae.safetensors"
    t5: HubFile = "Wan-AI/Wan2.1-I2V-14B-720P:models_t5_umt5-xxl-enc-bf16.pth"
    clip: HubFile | None = Field(None, description="Wan 2.1 I2V only")


class Train(Strict):
    # Wan 2.1 presets set these here; Wan 2.2 presets set them per expert.
    learning_rate: float | None = Field(None, gt=0, le=1)
    network_dim: int | None = Field(None, gt=0, le=MAX_RANK)
    network_alpha: float | None = Field(None, gt=0, le=MAX_RANK)
    min_timestep: int | None = Field(None, ge=0, le=999)
    max_timestep: int | None = Field(None, ge=1, le=1000)

    network_module: Literal["networks.lora_wan", "networks.loha", "networks.lokr"] = "networks.lora_wan"
    optimizer_type: str = "adamw8bit"
    weight_decay: float = Field(0.01, ge=0, le=1)
    lr_scheduler: Literal[
        "polynomial", "constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts"
    ] = "polynomial"
    lr_scheduler_power: float = Field(2.0, gt=0, le=100)
    lr_end_ratio: float = Field(0.01, ge=0, lt=1, description="polynomial floor as a fraction of the peak lr")
    lr_warmup_steps: int = Field(0, ge=0, le=10_000_000)
    seed: int = Field(42, ge=0, le=MAX_SEED)
    max_train_epochs: int = Field(50, gt=0, le=MAX_EPOCHS)
    save_every_n_epochs: int = Field(5, gt=0, le=MAX_EPOCHS)
    timestep_sampling: Literal["shift", "sigma", "uniform", "sigmoid", "logsnr"] = "shift"
    discrete_flow_shift: float = Field(gt=0, le=100)
    attention: Literal["sdpa", "flash_attn", "xformers", "flash3"] = "sdpa"
    gradient_checkpointing: bool = True
    gradient_accumulation_steps: int = Field(1, gt=0, le=1024)
    max_data_loader_n_workers: int = Field(2, ge=0, le=256)
    persistent_data_loader_workers: bool = True
    # None: the fit picks the smallest count (or the activation offload) that fits resources.gpu_memory_gb;
    # a number here or in --set always wins.
    blocks_to_swap: int | None = Field(None, ge=0, le=100)
    gradient_checkpointing_cpu_offload: bool | None = None
    save_state: bool = False
    tensorboard: bool = True

    @field_validator("optimizer_type")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value.lower() in ("adamw", "adamw8bit", "adafactor") or "." in value:
            return value
        raise ValueError("use adamw, adamw8bit, adafactor or a full class path such as torch.optim.AdamW")


class Cache(Strict):
    vae_cache_cpu: bool = True
    text_encoder_batch_size: int = Field(16, gt=0, le=1024)
    fp8_t5: bool = True


class ImageEntry(Strict):
    resolution: tuple[Size, Size] = Field(description="[width, height]; buckets keep this area")
    num_repeats: int = Field(1, gt=0, le=MAX_REPEATS)


class VideoEntry(Strict):
    name: Annotated[str, Field(pattern=VIDEO_ENTRY_NAME)]
    resolution: tuple[Size, Size]
    target_frames: list[Annotated[int, Field(ge=1, le=MAX_FRAMES)]] = Field(min_length=1, max_length=16)
    frame_extraction: Literal["head", "chunk", "slide", "uniform", "full"] = "head"
    frame_sample: int | None = Field(None, gt=0, le=1000)
    frame_stride: int | None = Field(None, gt=0, le=10_000)
    max_frames: int | None = Field(None, gt=0, le=100_000)
    num_repeats: int = Field(1, gt=0, le=MAX_REPEATS)

    @field_validator("target_frames")
    @classmethod
    def _four_n_plus_one(cls, frames: list[int]) -> list[int]:
        for n in frames:
            _frames(n)
        return frames


def _default_videos() -> list[VideoEntry]:
    # Each clip is seen twice: its first 21 frames at 720p for detail, and two 45-frame windows spread
    # evenly over the clip (frame_sample=2) at a lower area, so longer motion fits in 80 GB.
    return [
        VideoEntry(name="head", resolution=(1280, 720), target_frames=[21], frame_extraction="head"),
        VideoEntry(name="uniform", resolution=(960, 544), target_frames=[45], frame_extraction="uniform",
                   frame_sample=2),
    ]


class Dataset(Strict):
    batch_size: int = Field(1, gt=0, le=256)
    enable_bucket: bool = True
    bucket_no_upscale: bool = True
    images: ImageEntry = ImageEntry(resolution=(1280, 720))
    videos: list[VideoEntry] = Field(default_factory=_default_videos, max_length=32)


class SamplePrompt(Strict):
    """One extra sample prompt (`--samples FILE` lines become these)."""

    text: Annotated[str, Field(min_length=1)]
    frames: int | None = Field(None, gt=0, le=MAX_FRAMES)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    image: str | None = Field(None, description="I2V start frame, relative to the dataset folder")

    @field_validator("text")
    @classmethod
    def _no_option_marker(cls, text: str) -> str:
        # musubi's --from_file reads one prompt a line: a line break would make two prompts (and two seeds).
        if any(unicodedata.category(ch) in ("Cc", "Zl", "Zp") for ch in text):
            raise ValueError("a prompt is one line of text (musubi's prompt file holds one prompt a line): join "
                             "its lines with spaces and drop control characters")
        # musubi's --from_file splits each line at " --": such a prompt would lose its tail.
        if " --" in text or text.lstrip().startswith("#"):
            raise ValueError("a prompt may not contain ' --' or start with '#' (musubi's prompt file syntax)")
        return text

    @field_validator("frames")
    @classmethod
    def _four_n_plus_one(cls, frames: int | None) -> int | None:
        return None if frames is None else _frames(frames)


class Samples(Strict):
    """Sample videos of saved checkpoints, rendered with musubi's wan_generate_video after training."""

    enabled: bool = True
    captions: int = Field(2, ge=0, le=64, description="how many of the dataset's own captions to sample")
    prompts: list[SamplePrompt] = Field(default_factory=list, max_length=64)
    every: int = Field(2, gt=0, le=MAX_EPOCHS, description="every Nth saved checkpoint, plus the last")
    width: Size = 832
    height: Size = 480
    frames: int = Field(33, gt=0, le=MAX_FRAMES)
    steps: int | None = Field(None, gt=0, le=1000, description="empty: musubi's default for the task")
    guidance: float | None = Field(None, gt=0, le=100, description="empty: musubi's default for the task")
    flow_shift: float | None = Field(None, gt=0, le=100, description="empty: musubi's default for the task")
    seed: int = Field(42, ge=0, le=MAX_SEED)

    @field_validator("frames")
    @classmethod
    def _four_n_plus_one(cls, frames: int) -> int:
        return _frames(frames)


class Resources(Strict):
    gpu_memory_gb: int = Field(ge=8, le=1024, description="GPU memory the plan must fit, in GB (--gpu-memory)")
    time_limit_hours: float = Field(gt=0, le=24)
    # Data-parallel processes on one machine (accelerate --multi_gpu); 8 is the most one machine offers on
    # Modal and RunPod. Each process holds the whole model, so every GPU needs gpu_memory_gb.
    gpus: int = Field(default=1, ge=1, le=8, description="GPUs per run, data-parallel (--gpus-per-run)")


class Preset(Strict):
    name: Annotated[str, Field(pattern=PRESET_NAME)]
    description: str = Field(max_length=500)
    family: Literal["wan21", "wan22"]
    output_name: Annotated[str, Field(pattern=OUTPUT_NAME)] | None = None
    model: Model
    experts: Experts | None = None
    train: Train
    cache: Cache = Cache()
    dataset: Dataset = Dataset()
    samples: Samples = Samples()
    resources: Resources

    @model_validator(mode="after")
    def _unique_video_names(self) -> Preset:
        names = [v.name for v in self.dataset.videos]
        if len(names) != len(set(names)):
            raise ValueError("dataset.videos: every entry needs its own name")
        return self


PER_EXPERT_FIELDS = ("learning_rate", "network_dim", "network_alpha", "min_timestep", "max_timestep")


def _wan_version(preset: Preset) -> str:
    return contract.task_info(preset.model.task)["wan_version"]


def _family_checks(p: Preset) -> list[tuple[str, str]]:
    problems = []
    wan22 = _wan_version(p) == "2.2"
    if (p.family == "wan22") != wan22:
        problems.append(("family", f"{p.family} does not match task {p.model.task}"))
    if wan22:
        if p.experts is None:
            problems.append(("experts", "Wan 2.2 presets need [experts.high] and [experts.low]"))
        if p.model.dit is not None:
            problems.append(("model.dit", "Wan 2.2 sets the DiT per expert: use experts.high.dit / experts.low.dit"))
        for field in PER_EXPERT_FIELDS:
            if getattr(p.train, field) is not None:
                problems.append((f"train.{field}", f"Wan 2.2 sets this per expert: use experts.high.{field} "
                                 f"or experts.low.{field}"))
        return problems
    if p.experts is not None:
        problems.append(("experts", "Wan 2.1 has a single DiT: remove the experts table"))
    if p.model.dit is None:
        problems.append(("model.dit", "Wan 2.1 presets need a DiT file"))
    for field in ("learning_rate", "network_dim", "network_alpha"):
        if getattr(p.train, field) is None:
            problems.append((f"train.{field}", "required for Wan 2.1 presets"))
    return problems


def _timestep_ranges(p: Preset) -> list[tuple[str, str]]:
    ranges = [("train", p.train.min_timestep, p.train.max_timestep)]
    if p.experts:
        ranges += [(f"experts.{e}", getattr(p.experts, e).min_timestep, getattr(p.experts, e).max_timestep)
                   for e in EXPERTS]
    return [(f"{where}.min_timestep", f"must be below max_timestep ({hi}), got {lo}")
            for where, lo, hi in ranges if lo is not None and hi is not None and lo >= hi]


def _dit_files(p: Preset) -> list[tuple[str, str]]:
    if p.experts:
        return [(f"experts.{e}.dit", getattr(p.experts, e).dit) for e in EXPERTS]
    return [("model.dit", p.model.dit)] if p.model.dit else []


def _model_checks(p: Preset) -> list[tuple[str, str]]:
    info = contract.task_info(p.model.task)
    problems = []
    if p.model.clip and not info["needs_clip_features"]:
        problems.append(("model.clip", f"{p.model.task} does not use CLIP (only Wan 2.1 I2V does): remove it"))
    if info["needs_clip_features"] and not p.model.clip:
        problems.append(("model.clip", f"{p.model.task} needs the CLIP vision encoder file"))
    if p.model.fp8_scaled and p.model.fp8_base is False:
        problems.append(("model.fp8_scaled", "needs model.fp8_base=true (or unset)"))
    if p.train.gradient_checkpointing_cpu_offload and not p.train.gradient_checkpointing:
        problems.append(("train.gradient_checkpointing_cpu_offload", "offloads checkpointed activations: needs "
                         "train.gradient_checkpointing=true"))
    if (p.train.blocks_to_swap or 0) > info["max_blocks_to_swap"]:
        problems.append(("train.blocks_to_swap", f"{p.model.task} has {info['num_layers']} blocks: "
                         f"use at most {info['max_blocks_to_swap']}"))
    for where, dit in _dit_files(p):
        other = {"bf16": "fp16", "fp16": "bf16"}[p.model.dtype]
        if re.search(rf"[_.-]{other}[_.]", dit.rsplit("/", 1)[-1]):
            problems.append((where, f"file name says {other} but model.dtype is {p.model.dtype}: "
                             f"set model.dtype={other} (musubi needs --mixed_precision to match the DiT)"))
    return problems


def cross_checks(preset: Preset) -> list[tuple[str, str]]:
    """Rules spanning several fields, as (dotted path, message) pairs; empty when the preset is sound."""
    return _family_checks(preset) + _timestep_ranges(preset) + _model_checks(preset)
