"""What a run or a sweep will take and cost, said by every `--dry-run`: no key, no network, no media opened.

A dry run must stay free of Pillow and PyAV (tests/test_imports.py), so it cannot read the media's sizes and
lengths as the launch's media check does (launcher/media/check.py). It times the same musubi items instead
from the file counts: every image at its entry's resolution, every video cut into the clips its entry takes
from a video just long enough for them (a longer `slide`/`chunk`/`full` video gives more). The time then goes
through the launch's own formula (launcher/cost.py: + start-up, x the backend's price), so the two lines
differ only where the real media differ from that assumption. Prices: Modal's and RunPod's tables (RunPod's
offline catalog, never the API); the local backend runs on the user's own GPU, and SkyPilot picks the cloud,
and so the price, only at launch.
"""

from __future__ import annotations

import dataclasses

from launcher import cost
from launcher.core.dataset import DatasetLayout
from launcher.core.schema import Preset

BASIS = "time from the file counts at the preset's sizes, media not opened, +-50%"
NO_BACKEND = "add --backend modal or runpod to price it"
UNPRICED = {None: NO_BACKEND, "local": "$0, this machine's own GPU",
            "skypilot": "SkyPilot picks the cloud and its price at launch (`sky show-gpus` lists them)"}


def nominal_seconds(preset: Preset, layout: DatasetLayout, trainings: int = 1) -> float:
    """Training seconds of `trainings` trainings, with every file at its entry's full size (see the module)."""
    from launcher.media import buckets
    from launcher.media.check import Entry, training_seconds

    ds, counts, entries = preset.dataset, layout.counts, []
    if counts["image"]:
        images = Entry("images", "", ds.images.num_repeats)
        images.items[(*ds.images.resolution, 1)] = counts["image"]
        entries.append(images)
    for video in ds.videos if counts["video"] else ():
        longest = (video.max_frames or buckets.DEFAULT_MAX_FRAMES) if video.frame_extraction == "full" else \
            max(video.target_frames) * ((video.frame_sample or 1) if video.frame_extraction == "uniform" else 1)
        entry = Entry(video.name, "", video.num_repeats)
        for _, frames in buckets.extraction_windows(longest, video.target_frames, video.frame_extraction,
                                                    video.frame_stride, video.frame_sample, video.max_frames):
            entry.items[(*video.resolution, frames)] += counts["video"]
        entries.append(entry)
    return training_seconds(preset, entries, trainings)


def _trainings(job) -> int:
    from launcher.core.plan import experts_to_train

    preset = job.loaded.preset
    return len(experts_to_train(preset, job.plan.expert)) if preset.experts else 1


def _unpriced(job) -> cost.Quote:
    """The preset's GPU class at no price: the user's own GPU, or a cloud not chosen yet."""
    return cost.Quote(f"{job.plan.resources.gpu_memory_gb} GB class GPU", 0.0, job.plan.resources.gpu_count)


def run_line(backend_name: str | None, backend, job, options) -> str:
    """`run --dry-run [--backend B]`'s estimate line (with no backend, the plan's). Call it after
    `backend.dry_run(...)`: RunPod's dry run sets the offline catalog that its `quote` then prices from."""
    seconds = nominal_seconds(job.loaded.preset, job.layout, _trainings(job))
    if backend_name in UNPRICED or not hasattr(backend, "quote"):
        est = cost.estimate(seconds, _unpriced(job))
        return (f"estimate: ~{est.hours:.1f} h on {est.quote.gpus} x {est.quote.gpu} = {est.gpu_hours:.1f} "
                f"GPU-hours ({BASIS}; price: {UNPRICED.get(backend_name, NO_BACKEND)})")
    return cost.estimate(seconds, backend.quote(job, options)).line(BASIS)


def sweep_line(backend_name: str | None, module, sweep, options) -> str:
    """`sweep --dry-run [--backend B]`'s estimate line: every training timed on its own grid values."""
    from launcher.sweep import budget

    seconds = [nominal_seconds(t.job.loaded.preset, t.job.layout, 1) for t in sweep.trainings]
    if backend_name == "runpod":
        quotes, cache = module.quotes(sweep, options, _offline_runpod())
    elif hasattr(module, "quotes"):
        quotes, cache = module.quotes(sweep, options)
    else:  # the user's own GPU, or no backend yet: GPU-hours only
        quotes = [_unpriced(t.job) for t in sweep.trainings]
        est = budget.estimate(sweep, quotes, seconds, dataclasses.replace(quotes[0], gpus=1))
        passes = f"{len(est.caches)} cache pass{'es' if len(est.caches) > 1 else ''}"
        return (f"estimate: {len(est.runs)} runs + {passes}, ~{est.gpu_hours:.1f} GPU-hours "
                f"({BASIS}; price: {UNPRICED.get(backend_name, NO_BACKEND)})")
    return budget.estimate(sweep, quotes, seconds, cache).line(BASIS)


def _offline_runpod():
    from launcher.backends import runpod

    backend = runpod.RunPodBackend()
    backend._catalog = runpod.offline_catalog()[0]  # as runpod_sweep.dry_run: never the API in a dry run
    return backend
