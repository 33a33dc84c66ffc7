"""Fits your GPU: the cheapest memory settings under which a training fits `resources.gpu_memory_gb`.

In order of cost to quality and speed: 16-bit weights; fp8 base weights (+ fp8_scaled for Wan 2.2); then
`--blocks_to_swap N` with the smallest N that fits (at most the model's maximum); then
`--gradient_checkpointing_cpu_offload` (musubi's WanAttentionBlock supports it at the pinned commit), again
with the smallest N. A setting the preset or `--set` gives explicitly is kept whatever the estimate says.
When nothing fits, one UserError line names the dataset entries to shrink, and to what. Pure, like the plan.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from launcher.core import memory
from launcher.core.errors import UserError
from launcher.core.memory import Load, Settings, Shape
from launcher.core.schema import Preset
from launcher.core.tokens import DEFAULT_MAX_FRAMES

USABLE = 0.95  # of the card: the driver, ECC and a display take the rest
# The GPU sizes rented or sold (GB); "the next tier" of an out-of-memory hint is the next one up.
TIERS = (8, 12, 16, 24, 32, 40, 48, 80, 96, 141, 180)


@dataclass(frozen=True)
class Choice:
    """What the fit chose for one training, with the estimate and the words `--dry-run` prints."""

    expert: str | None
    gpu_memory_gb: int
    fp8_base: bool
    fp8_scaled: bool
    blocks_to_swap: int
    gradient_checkpointing_cpu_offload: bool
    estimated_gpu_gb: float
    estimated_host_gb: float
    largest_item: str
    reason: str
    oom_hint: str  # what run.json and the last log line say if the training still runs out of memory


@dataclass(frozen=True)
class Request:
    """The memory-relevant part of a preset for one training; None = the fit decides."""

    shape: Shape
    rank: int
    checkpointing: bool
    fp8: bool | None
    fp8_scaled: bool
    swap: int | None
    offload: bool | None

    @classmethod
    def of(cls, preset: Preset, rank: int) -> Request:
        t, m = preset.train, preset.model
        return cls(Shape.of(m.task), rank, t.gradient_checkpointing, m.fp8_base, m.fp8_scaled, t.blocks_to_swap,
                   t.gradient_checkpointing_cpu_offload)


def loads(preset: Preset, kinds: Sequence[str]) -> list[Load]:
    """The largest item of every dataset entry the dataset's media kinds use (buckets keep each entry's area)."""
    ds, result = preset.dataset, []
    if "image" in kinds:
        result.append(Load("dataset.images", *ds.images.resolution, 1, ds.batch_size))
    for index, video in enumerate(ds.videos if "video" in kinds else ()):
        full = video.frame_extraction == "full"
        frames = (video.max_frames or DEFAULT_MAX_FRAMES) if full else max(video.target_frames)
        result.append(Load(f"dataset.videos.{index}", *video.resolution, (frames - 1) // 4 * 4 + 1, ds.batch_size,
                           "max_frames" if full else "target_frames"))
    return result


def _candidates(req: Request) -> Iterator[Settings]:
    """Every allowed setting, cheapest first; explicit settings are never varied."""
    swaps = range(req.shape.max_swap + 1) if req.swap is None else (req.swap,)
    # musubi offloads checkpointed activations only (the schema refuses offload without checkpointing).
    offloads = [o for o in ((False, True) if req.offload is None else (req.offload,)) if req.checkpointing or not o]
    if req.fp8 is None:
        yield Settings(False, swaps[0], offloads[0])  # 16-bit weights, before any other saving
    for offload in offloads:
        for swap in swaps:
            yield Settings(req.fp8 is not False, swap, offload)


def _fits(req: Request, settings: Settings, tokens: int, gpu_gb: int) -> bool:
    return memory.estimate(req.shape, settings, req.rank, tokens, req.checkpointing).gpu_gb <= gpu_gb * USABLE


def _search(req: Request, tokens: int, gpu_gb: int) -> Settings | None:
    return next((s for s in _candidates(req) if _fits(req, s, tokens, gpu_gb)), None)


def next_tier(req: Request, tokens: int, gpu_gb: int) -> int | None:
    return next((tier for tier in TIERS if tier > gpu_gb and _search(req, tokens, tier)), None)


def _settings_words(req: Request, s: Settings) -> str:
    words = []
    if s.fp8:
        words.append("fp8 base" + (" + scaled" if req.fp8_scaled or (req.shape.wan22 and req.fp8 is None) else ""))
    if s.blocks_to_swap or req.swap is not None:
        words.append(f"blocks_to_swap {s.blocks_to_swap}" + ("" if req.swap is None else " (set by you)"))
    elif req.swap is None:
        words.append("no block swap")
    if s.offload:
        words.append("activation CPU offload" + ("" if req.offload is None else " (set by you)"))
    return ", ".join(words)


def _largest_fitting_tokens(req: Request, settings: Settings, gpu_gb: int) -> int:
    est = memory.estimate(req.shape, settings, req.rank, 0, req.checkpointing)
    return int((gpu_gb * USABLE - est.fixed_gpu_gb) / est.gpu_gb_per_token)


def _shrink_words(over: Sequence[Load], tokens: int) -> str:
    return "; ".join(f"{load.label()} with {load.shrunk(tokens)}" for load in over)


def no_fit_message(name: str, req: Request, items: Sequence[Load], gpu_gb: int) -> str:
    """One line: why `name` cannot train in `gpu_gb` even at the most frugal allowed settings, and the fix."""
    last = list(_candidates(req))[-1]
    tokens = _largest_fitting_tokens(req, last, gpu_gb)
    largest = max(items, key=lambda load: load.tokens)
    tier = next_tier(req, largest.tokens, gpu_gb)
    bigger = f"use --gpu-memory {tier}" if tier else "no GPU class LoRA Gym knows is large enough"
    if not req.checkpointing:  # without it every block keeps its activations: by far the largest saving
        bigger = f"--set train.gradient_checkpointing=true, or {bigger}"
    frugal = _settings_words(req, last)
    if tokens < memory.MIN_TOKENS:
        fixed = memory.estimate(req.shape, last, req.rank, 0, req.checkpointing).gpu_gb
        return (f"{name} needs about {fixed:g} GB before any data even with {frugal}, more than {gpu_gb} GB "
                f"allows: {bigger}")
    over = [load for load in items if load.tokens > tokens]
    return f"{name} does not fit {gpu_gb} GB even with {frugal}: shrink {_shrink_words(over, tokens)}, or {bigger}"


def _oom_hint(req: Request, s: Settings, largest: Load, gpu_gb: int) -> str:
    fixes = []
    tier = next_tier(req, largest.tokens, gpu_gb)
    if s.blocks_to_swap < req.shape.max_swap:
        fixes.append(f"--set train.blocks_to_swap={min(req.shape.max_swap, s.blocks_to_swap + 10)}")
    elif not s.offload and req.checkpointing:
        fixes.append("--set train.gradient_checkpointing_cpu_offload=true")
    else:
        fixes.append(f"shrinking {largest.label()} with {largest.shrunk(int(largest.tokens * 0.75))}")
    if tier:
        fixes.append(f"a larger GPU with --gpu-memory {tier}")
    return (f"CUDA ran out of memory with {_settings_words(req, s)} on the {gpu_gb} GB plan "
            f"(largest item {largest.label()}): try {', or '.join(fixes)}")


def choose(name: str, expert: str | None, req: Request, items: Sequence[Load], gpu_gb: int) -> Choice:
    """The cheapest settings that fit; UserError (one line) when none do and nothing explicit is in the way."""
    largest = max(items, key=lambda load: load.tokens)
    chosen = _search(req, largest.tokens, gpu_gb)
    over = ""
    if chosen is None:
        explicit = (("train.blocks_to_swap", req.swap is not None), ("model.fp8_base", req.fp8 is False),
                    ("train.gradient_checkpointing_cpu_offload", req.offload is not None))
        pinned = [key for key, given in explicit if given]
        if not pinned:
            raise UserError(no_fit_message(name, req, items, gpu_gb))
        # An explicit setting wins: plan it as given, and say the estimate is over.
        chosen = list(_candidates(req))[-1]
        fixes = ["--set train.gradient_checkpointing=true"] * (not req.checkpointing)
        fixes.append("let LoRA Gym choose with " + " ".join(f"--set {key}=none" for key in pinned))
        over = f"; over {gpu_gb} GB by the estimate, expect out-of-memory: {', or '.join(fixes)}"
    est = memory.estimate(req.shape, chosen, req.rank, largest.tokens, req.checkpointing)
    reason = (f"{gpu_gb} GB: {_settings_words(req, chosen)} (estimated {est.gpu_gb:g} GB GPU, "
              f"{est.host_gb:g} GB host; largest item {largest.label()}){over}")
    scaled = chosen.fp8 and (req.fp8_scaled or (req.fp8 is None and req.shape.wan22))
    return Choice(expert, gpu_gb, chosen.fp8, bool(scaled), chosen.blocks_to_swap, chosen.offload, est.gpu_gb,
                  est.host_gb, largest.label(), reason, _oom_hint(req, chosen, largest, gpu_gb))
