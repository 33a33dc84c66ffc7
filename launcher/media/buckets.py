"""musubi-tuner's item and bucket arithmetic, reimplemented without numpy, torch or decoding.

Mirrors `BucketSelector`, `VideoDataset.retrieve_latent_cache_batches` and `BucketBatchManager` in
musubi-tuner's `src/musubi_tuner/dataset/image_video_dataset.py`, so that the check predicts the buckets,
items and steps musubi will log, before any GPU time is spent. Pure functions: tested without media files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

from launcher.core.tokens import DEFAULT_MAX_FRAMES, STEP, latent_tokens  # noqa: F401  (also this module's API)

# musubi's defaults for the video keys a preset may leave unset (config_utils.VideoDatasetParams).
DEFAULT_FRAME_STRIDE = 1
DEFAULT_FRAME_SAMPLE = 1


def divisible_by(value: int, step: int = STEP) -> int:
    return value - value % step


@dataclass(frozen=True)
class Buckets:
    """The buckets of one musubi dataset entry: `resolution`'s area in every aspect ratio, 16-pixel steps."""

    resolution: tuple[int, int]
    enable_bucket: bool = True
    no_upscale: bool = False

    @property
    def area(self) -> int:
        return self.resolution[0] * self.resolution[1]

    @cached_property  # select() runs once per item: build the list once per entry
    def sizes(self) -> list[tuple[int, int]]:
        if not self.enable_bucket:
            return [tuple(self.resolution)]
        # Widths from half the square side up to the square side, each with the largest 16-multiple height
        # that keeps the area; the transposes cover the portrait half.
        sqrt_size = int(math.sqrt(self.area))
        sizes = set()
        for w in range(divisible_by(sqrt_size // 2), sqrt_size + STEP, STEP):
            h = divisible_by(self.area // w)
            sizes |= {(w, h), (h, w)}
        return sorted(sizes)

    def select(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (width, height) an item of `size` is resized and centre-cropped to."""
        width, height = size
        # musubi ignores bucket_no_upscale without buckets; with it, smaller items keep their own size.
        if self.enable_bucket and self.no_upscale and width * height <= self.area:
            return divisible_by(width), divisible_by(height)
        ratio = width / height
        # The first bucket with the closest aspect ratio, as numpy's argmin picks in musubi.
        best = min(range(len(self.sizes)), key=lambda i: abs(self._ratios[i] - ratio))
        return self.sizes[best]

    @cached_property
    def _ratios(self) -> list[float]:
        return [w / h for w, h in self.sizes]


def selector_for(entry_resolution: tuple[int, int], kind: str, enable_bucket: bool, no_upscale: bool) -> Buckets:
    """musubi caches videos with `BucketSelector(resolution)`: always bucketed, always filling the area,
    whatever the dataset's bucket flags say; images follow the flags.

    (musubi regroups cached videos at training time with the flags, which differs only for clips smaller
    than the area with bucket_no_upscale and batch_size > 1; the check groups them by their cached size.)
    """
    if kind == "video":
        return Buckets(tuple(entry_resolution))
    return Buckets(tuple(entry_resolution), enable_bucket, no_upscale and enable_bucket)


def extraction_windows(frame_count: int, target_frames: Iterable[int], mode: str = "head",
                       frame_stride: int | None = None, frame_sample: int | None = None,
                       max_frames: int | None = None) -> list[tuple[int, int]]:
    """(first frame, frame count) of every clip musubi cuts from a video of `frame_count` frames."""
    stride = frame_stride or DEFAULT_FRAME_STRIDE
    sample = frame_sample or DEFAULT_FRAME_SAMPLE
    targets = sorted({(t - 1) // 4 * 4 + 1 for t in target_frames})  # musubi rounds down to 4N+1
    if mode == "uniform" and sample == 1:
        mode = "head"  # musubi does the same, with a warning
    if mode == "full":
        frames = (min(frame_count, max_frames or DEFAULT_MAX_FRAMES) - 1) // 4 * 4 + 1
        return [(0, frames)] if frames >= 1 else []
    windows: list[tuple[int, int]] = []
    for t in targets:
        if frame_count < t:
            continue
        if mode == "head":
            windows.append((0, t))
        elif mode == "chunk":
            windows += [(i, t) for i in range(0, frame_count - t + 1, t)]
        elif mode == "slide":
            windows += [(i, t) for i in range(0, frame_count - t + 1, stride)]
        elif mode == "uniform":
            windows += [(i, t) for i in _linspace_int(frame_count - t, sample)]
        else:
            raise ValueError(f"unknown frame_extraction {mode!r}")
    return windows


def _linspace_int(stop: int, num: int) -> list[int]:
    """`np.linspace(0, stop, num, dtype=int)` without duplicates: musubi names each cached clip by its start
    frame, so two equal starts write one cache file and train once."""
    step = stop / (num - 1)
    starts = [int(i * step) for i in range(num - 1)] + [stop]
    return sorted(set(starts))


def batches(items_per_bucket: Mapping[object, int], num_repeats: int, batch_size: int) -> int:
    """musubi's batches for one dataset entry: each bucket is repeated, then cut into batches on its own."""
    return sum(math.ceil(count * num_repeats / batch_size) for count in items_per_bucket.values() if count)


def steps_per_epoch(batches_per_entry: Iterable[int], gradient_accumulation_steps: int, processes: int = 1) -> int:
    """Optimizer steps per epoch: musubi concatenates the entries' batches, accelerate deals them out to the
    data-parallel processes and accumulates them: trainer_base.py's ceil(len(dataloader) / num_processes /
    gradient_accumulation_steps)."""
    return math.ceil(sum(batches_per_entry) / processes / gradient_accumulation_steps)


# Seconds per training step (one item, batch 1) at the presets' settings (fp8 base weights, gradient
# checkpointing, SDPA, LoRA), on an H100 80GB, by DiT tokens per item (a 1280x720 image is 3,600 tokens,
# 21 frames of it 21,600, 81 frames 75,600), interpolated linearly and extrapolated from the last segment.
# These are ESTIMATES, not measurements: LoRA Gym has not timed them. The anchors are our reading of speeds
# users report for musubi-tuner (in the order of 2 s/step for 14B images and 10-15 s/step for 14B 720p clips
# of ~20 frames on H100-class GPUs); the other points scale those by the DiT's matmul and attention FLOPs
# (attention grows with tokens squared). Expect +-50%; caching and model loading are not included.
# Replace them with measured figures once real runs log their step times.
STEP_SECONDS = {
    "14B": ((0, 0.5), (3_600, 2.0), (21_600, 11.0), (75_600, 60.0)),
    "1.3B": ((0, 0.2), (3_600, 0.35), (21_600, 1.5), (75_600, 12.0)),
}
# Slowdown of each GPU class against the H100, by the smallest class at least as large as --gpu-memory:
# 48 GB ~ L40S / RTX 6000 Ada, 24 GB ~ RTX 4090 (a 14B model there also swaps blocks, which is slower still).
GPU_SLOWDOWN = ((24, 3.5), (48, 2.5), (80, 1.0))


def gpu_slowdown(gpu_memory_gb: int) -> float:
    return next((factor for size, factor in GPU_SLOWDOWN if gpu_memory_gb <= size), GPU_SLOWDOWN[-1][1])


def step_seconds(model_size: str, tokens: int, gpu_memory_gb: int) -> float:
    points = STEP_SECONDS[model_size]
    for (t0, s0), (t1, s1) in zip(points, points[1:], strict=False):
        if tokens <= t1 or (t1, s1) == points[-1]:
            return (s0 + (s1 - s0) * (tokens - t0) / (t1 - t0)) * gpu_slowdown(gpu_memory_gb)
    raise AssertionError("unreachable")
