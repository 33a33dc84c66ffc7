"""`launcher dataset check`: every problem of a dataset against a preset, found at once, before renting a GPU.

The structural checks (captions, stem clashes, stray files) are `check_structure`'s; this adds what needs the
media: every file opens and decodes (what training reads of it; `decode=False` reads headers only), each video's
frames, fps and duration against the preset's video
entries, the bucket each item lands in, musubi's steps, and a rough training time. Every problem is collected
into one table, so a user fixes the dataset in one pass instead of one error per run.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from launcher.core import fit
from launcher.core.dataset import SUBFOLDERS, DatasetLayout, check_structure, media_kind
from launcher.core.errors import UserError
from launcher.core.memory import Load
from launcher.core.schema import EXPERTS, Preset, VideoEntry
from launcher.media import TRAIN_FPS
from launcher.media import buckets as musubi  # musubi-tuner's bucket, clip and step arithmetic
from launcher.media.probe import Probe, decode_image, decode_video, probe

Bucket = tuple[int, int, int]  # width, height, frames (1 for images)
Cuts = tuple[tuple[int, int], list[tuple[int, int]]]  # (width, height), [(first frame, frames)] of one video


@dataclass(frozen=True)
class Problem:
    level: str  # "error" stops training; "warning" trains, but probably not as intended
    message: str  # starts with the file it is about, ends with the fix


@dataclass(frozen=True)
class Media:
    relpath: str  # as shown: "videos/clip.mp4"
    folder: str  # "", "images" or "videos": musubi reads each folder and kind as its own dataset
    kind: str
    probe: Probe


@dataclass
class Entry:
    """One musubi dataset: a folder of one kind under one preset entry (`images`, or a video entry)."""

    label: str
    folder: str
    num_repeats: int
    items: Counter[Bucket] = field(default_factory=Counter)  # items before repeats
    batches: int = 0


@dataclass
class Report:
    root: str
    preset: Preset
    trainings: int  # 2 for --expert both; per-expert figures otherwise
    problems: list[Problem]
    media: list[Media]
    entries: list[Entry]
    cuts: dict[str, dict[str, Cuts]]  # video relpath -> entry label -> its bucket and clips
    steps_per_epoch: int = 0
    seconds: float = 0.0  # estimated, all trainings together
    decoded: Counter[str] | None = None  # "images", "frames" decoded; None: headers only
    memory: str = ""  # the GPU memory fit on the real buckets (launcher/core/fit.py)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.preset.train.max_train_epochs


# --- finding and probing the media -------------------------------------------------------------------

def media_files(root: Path) -> list[tuple[str, str, Path]]:
    """(folder, kind, path) of every media file musubi would read: the root, images/ and videos/."""
    folders = [("", root)] + [(sub, root / sub) for sub in SUBFOLDERS if (root / sub).is_dir()]
    return [(name, media_kind(path.name), path) for name, folder in folders for path in sorted(folder.iterdir())
            if path.is_file() and media_kind(path.name)]


def _structural_problems(root: Path) -> list[Problem]:
    try:
        check_structure(root)  # the check needs no content digests: nothing is hashed
    except UserError as exc:
        return [Problem("error", message) for message in exc.problems]
    return []


def _probe_all(root: Path) -> tuple[list[Media], list[Problem]]:
    media, problems = [], []
    for folder, kind, path in media_files(root):
        relpath = path.relative_to(root).as_posix()
        result = probe(path, kind)
        if result.error:
            fix = "re-encode it" if kind == "video" else "re-save it"
            problems.append(Problem("error", f"{relpath} {result.error}: {fix} or remove it"))
        elif result.frames < 1:
            problems.append(Problem("error", f"{relpath} has no frames: re-encode it or remove it"))
        else:
            media.append(Media(relpath, folder, kind, result))
    return media, problems


# --- entries, buckets and steps ----------------------------------------------------------------------

def _cuts(entry: VideoEntry, frames: int) -> list[tuple[int, int]]:
    return musubi.extraction_windows(frames, entry.target_frames, entry.frame_extraction, entry.frame_stride,
                                     entry.frame_sample, entry.max_frames)


def _entries(preset: Preset, media: list[Media], report: Report) -> list[Problem]:
    """Fill report.entries and report.cuts the way musubi forms items; problems of items too small."""
    ds, problems = preset.dataset, []
    for folder in sorted({m.folder for m in media}):
        images = [m for m in media if m.folder == folder and m.kind == "image"]
        videos = [m for m in media if m.folder == folder and m.kind == "video"]
        if images:
            entry = Entry("images", folder, ds.images.num_repeats)
            buckets = musubi.selector_for(ds.images.resolution, "image", ds.enable_bucket, ds.bucket_no_upscale)
            for m in images:
                w, h = buckets.select(m.probe.size)
                if not w or not h:
                    problems.append(Problem("error", f"{m.relpath} is {m.probe.width}x{m.probe.height}, under 16 "
                                                     "pixels on a side: use a larger image or remove it"))
                    continue
                entry.items[(w, h, 1)] += 1
            report.entries.append(entry)
        for video in ds.videos if videos else ():
            entry = Entry(video.name, folder, video.num_repeats)
            buckets = musubi.selector_for(video.resolution, "video", ds.enable_bucket, ds.bucket_no_upscale)
            for m in videos:
                w, h = buckets.select(m.probe.size)
                cuts = _cuts(video, m.probe.frames)
                report.cuts.setdefault(m.relpath, {})[video.name] = ((w, h), cuts)
                entry.items.update((w, h, frames) for _, frames in cuts)
            report.entries.append(entry)
    for entry in report.entries:
        entry.batches = musubi.batches(entry.items, entry.num_repeats, ds.batch_size)
    return problems


def _needs(entry: VideoEntry) -> int:
    return 1 if entry.frame_extraction == "full" else min(entry.target_frames)


def _video_problems(preset: Preset, m: Media, cuts: dict[str, Cuts]) -> list[Problem]:
    problems, p = [], m.probe
    if not p.fps:
        problems.append(Problem("warning", f"{m.relpath} has no frame rate in its header: re-encode it at "
                                           f"{TRAIN_FPS} fps"))
    elif abs(p.fps - TRAIN_FPS) > 0.01:
        slower = p.fps > TRAIN_FPS
        speed = p.fps / TRAIN_FPS if slower else TRAIN_FPS / p.fps
        problems.append(Problem("warning", f"{m.relpath} is {p.fps:g} fps, Wan trains at {TRAIN_FPS} and musubi "
                                           f"takes every frame, so its motion is learned {speed:.3g}x "
                                           f"{'slower' if slower else 'faster'}: resample it with "
                                           "`launcher dataset prepare`"))
    entries = {e.name: e for e in preset.dataset.videos}
    empty = [name for name, (_, found) in cuts.items() if not found]
    needs = ", ".join(f"{name} (needs {_needs(entries[name])})" for name in empty)
    if empty and len(empty) == len(cuts):
        problems.append(Problem("error", f"{m.relpath} has {p.frames} frames, too few for every video entry: "
                                         f"{needs}: use a longer clip, or lower dataset.videos.N.target_frames"))
    elif empty:
        used = ", ".join(name for name in cuts if name not in empty)
        problems.append(Problem("warning", f"{m.relpath} has {p.frames} frames, too few for entry {needs}: it "
                                           f"trains only in {used}"))
    return problems


def _last_frame_read(cuts: dict[str, Cuts]) -> int:
    return max((start + frames for _, found in cuts.values() for start, frames in found), default=0)


def _decode_problems(report: Report) -> list[Problem]:
    """Decode each image in full and each video up to the last frame any entry reads; count what was decoded."""
    problems, report.decoded = [], Counter()
    for m in report.media:
        if m.kind == "image":
            reason = decode_image(Path(report.root) / m.relpath)
            report.decoded["images"] += reason is None
            if reason:
                problems.append(Problem("error", f"{m.relpath} {reason}: re-save it or remove it"))
            continue
        needed = _last_frame_read(report.cuts.get(m.relpath, {}))
        decoded, reason = decode_video(Path(report.root) / m.relpath, needed) if needed else (0, None)
        report.decoded["frames"] += decoded
        if reason:
            problems.append(Problem("error", f"{m.relpath}: frame {decoded + 1} of the {needed} that training reads "
                                             f"does not decode ({reason}): re-encode it or remove it"))
    return problems


# --- estimated training time -------------------------------------------------------------------------

def training_seconds(preset: Preset, entries: list[Entry], trainings: int) -> float:
    """Estimated seconds of all `trainings` over the entries' items (launcher/media/buckets.py step_seconds)."""
    size = "1.3B" if "1.3B" in preset.model.task else "14B"
    gpu, per_epoch = preset.resources.gpu_memory_gb, 0.0
    for entry in entries:
        for (w, h, frames), count in entry.items.items():
            per_epoch += count * entry.num_repeats * musubi.step_seconds(size, musubi.latent_tokens(w, h, frames), gpu)
    # Data parallel: each GPU trains its share of the items at the same time (ideal scaling, an estimate).
    return per_epoch * preset.train.max_train_epochs * trainings / preset.resources.gpus


def _gpu_share_problems(preset: Preset, entries: list[Entry]) -> list[Problem]:
    batches, gpus = sum(e.batches for e in entries), preset.resources.gpus
    if gpus > 1 and batches and batches < gpus:  # accelerate repeats batches so every process gets one
        return [Problem("warning", f"{batches} batches per epoch for {gpus} GPUs: some GPUs train repeated "
                                   f"batches; use fewer GPUs (--gpus-per-run {batches}) or more data")]
    return []


# --- GPU memory ----------------------------------------------------------------------------------------

def _loads(preset: Preset, entries: list[Entry]) -> list[Load]:
    """Each entry's largest bucket, as the fit takes it: by tokens, with the entry's dotted preset key."""
    index = {video.name: i for i, video in enumerate(preset.dataset.videos)}
    result = []
    for entry in entries:
        if entry.items:
            w, h, frames = max(entry.items, key=lambda b: musubi.latent_tokens(*b))
            key = "dataset.images" if entry.label == "images" else f"dataset.videos.{index[entry.label]}"
            full = key != "dataset.images" and preset.dataset.videos[index[entry.label]].frame_extraction == "full"
            result.append(Load(key, w, h, frames, preset.dataset.batch_size, "max_frames" if full else "target_frames"))
    return result


def _memory(preset: Preset, entries: list[Entry]) -> tuple[str, list[Problem]]:
    """The fit for the largest real bucket (per expert for Wan 2.2), or the one-line error when nothing fits."""
    loads = _loads(preset, entries)
    if not loads:
        return "", []
    ranks = [getattr(preset.experts, e).network_dim for e in EXPERTS] if preset.experts else [preset.train.network_dim]
    try:
        choice = fit.choose(preset.name, None, fit.Request.of(preset, max(ranks)), loads,
                            preset.resources.gpu_memory_gb)
    except UserError as exc:
        return "does not fit", [Problem("error", message) for message in exc.problems]
    return choice.reason, []


# --- the check ---------------------------------------------------------------------------------------

def check_dataset(root: str | Path, preset: Preset, trainings: int = 1,
                  layout: DatasetLayout | None = None, decode: bool = True) -> Report:
    """Every problem of the dataset at `root` for `preset`; `layout` (already scanned) skips the scan;
    `decode=False` trusts the headers (fast, but a truncated file passes)."""
    root = Path(root)
    if not root.is_dir():
        check_structure(root)  # raises the one-line "not found" / "not a folder" UserError
    problems = [] if layout else _structural_problems(root)
    media, found = _probe_all(root)
    report = Report(str(root), preset, trainings, problems + found, media, [], {})
    report.problems += _entries(preset, media, report)
    if decode:
        report.problems += _decode_problems(report)
    for m in media:
        if m.kind == "video":
            report.problems += _video_problems(preset, m, report.cuts.get(m.relpath, {}))
    if any(m.kind == "video" for m in media) and not preset.dataset.videos:
        report.problems.append(Problem("warning", "the videos are not trained: the preset has no dataset.videos "
                                                  "entries; add one, or move the videos out"))
    report.steps_per_epoch = musubi.steps_per_epoch([e.batches for e in report.entries],
                                                    preset.train.gradient_accumulation_steps, preset.resources.gpus)
    report.problems += _gpu_share_problems(preset, report.entries)
    report.seconds = training_seconds(preset, report.entries, trainings)
    report.memory, problems = _memory(preset, report.entries)
    report.problems += problems
    limit = preset.resources.time_limit_hours
    if report.seconds > limit * 3600:
        report.problems.append(Problem("warning", f"training is estimated at {report.seconds / 3600:.1f} h, over "
                                                  f"resources.time_limit_hours={limit:g}: lower "
                                                  "train.max_train_epochs or num_repeats, or raise the limit"))
    return report


# --- rendering ---------------------------------------------------------------------------------------

def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def _size(width: int, height: int) -> str:
    return f"{width}x{height}"


def _cut_cell(cuts: Cuts, details: bool) -> str:
    (w, h), found = cuts
    if not found:
        return "none"
    spans = ", ".join(f"{start}-{start + frames - 1}" for start, frames in found[:3])
    more = ", ..." if len(found) > 3 else ""
    return f"{len(found)} @ {_size(w, h)}" + (f" (frames {spans}{more})" if details else "")


def _video_rows(report: Report, details: bool) -> list[str]:
    videos = [m for m in report.media if m.kind == "video"]
    if not videos:
        return []
    names = [e.name for e in report.preset.dataset.videos]
    rows = []
    for m in videos:
        p, cuts = m.probe, report.cuts.get(m.relpath, {})
        frames = f"~{p.frames}" if p.frames_estimated else str(p.frames)
        rows.append((m.relpath, _size(*p.size), frames, f"{p.fps:g}" if p.fps else "?",
                     f"{p.duration:.2f}" if p.duration else "?", *(_cut_cell(cuts[n], details) for n in names)))
    header = ("VIDEO", "SIZE", "FRAMES", "FPS", "SECONDS", *(n.upper() for n in names))
    return ["videos (clips per entry @ bucket)", *_table(header, rows), ""]


def _image_rows(report: Report) -> list[str]:
    ds = report.preset.dataset
    buckets = musubi.selector_for(ds.images.resolution, "image", ds.enable_bucket, ds.bucket_no_upscale)
    rows = [(m.relpath, _size(*m.probe.size), _size(*buckets.select(m.probe.size)))
            for m in report.media if m.kind == "image"]
    return ["images", *_table(("IMAGE", "SIZE", "BUCKET"), rows), ""] if rows else []


def _bucket_rows(report: Report) -> list[str]:
    batch_size = report.preset.dataset.batch_size
    rows = [(e.label, f"{e.folder or '.'}/", f"{_size(w, h)}x{frames}f", count * e.num_repeats,
             musubi.batches({0: count}, e.num_repeats, batch_size))
            for e in report.entries for (w, h, frames), count in sorted(e.items.items())]
    header = ("ENTRY", "FOLDER", "BUCKET", "ITEMS", "BATCHES")
    return ["buckets (items with repeats)", *_table(header, rows), ""] if rows else []


def _duration(seconds: float) -> str:
    return f"{max(1, round(seconds / 60))} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _summary(report: Report) -> list[str]:
    p, counts = report.preset, Counter(m.kind for m in report.media)
    items = sum(count * e.num_repeats for e in report.entries for count in e.items.values())
    buckets = sum(len(e.items) for e in report.entries)
    total = f"{report.total_steps} ({p.train.max_train_epochs} epochs)"
    if p.experts:
        total += f" for each of the {report.trainings} experts" if report.trainings > 1 else " per expert"
    verdict = ", ".join(f"{len(found)} {name}{'s' if len(found) != 1 else ''}"
                        for name, found in (("error", report.errors), ("warning", report.warnings)) if found)
    rows = [("media", f"{counts['image']} images, {counts['video']} videos"),
            ("items", f"{items} per epoch in {buckets} bucket{'s' if buckets != 1 else ''}"),
            ("steps per epoch", f"{report.steps_per_epoch} ({_batch(p)}, gradient accumulation "
                                f"{p.train.gradient_accumulation_steps})"),
            ("total steps", total),
            ("estimated time", f"~{_duration(report.seconds)} on the {p.resources.gpu_memory_gb} GB GPU class "
                               "(rough estimate, +-50%; without caching and model loading)"),
            ("decoded", _decoded(report)),
            *([("GPU memory", report.memory)] if report.memory else []),
            ("result", verdict or "ready to train")]
    return ["summary", *(f"  {name:<17}{value}" for name, value in rows)]


def _batch(p) -> str:
    size, gpus = p.dataset.batch_size, p.resources.gpus
    return f"batch size {size}" if gpus == 1 else f"{gpus} GPUs at batch size {size} each, {size * gpus} per step"


def _decoded(report: Report) -> str:
    if report.decoded is None:
        return "headers only (--headers-only): a truncated or corrupt file passes"
    return (f"{report.decoded['images']} images in full, {report.decoded['frames']} video frames (every frame "
            "an entry reads)")


def render(report: Report, details: bool = False) -> str:
    """The report as text: media tables, buckets, the problems table, then the summary."""
    lines = [f"dataset {report.root}, preset {report.preset.name}", ""]
    lines += _video_rows(report, details) + (_image_rows(report) if details else []) + _bucket_rows(report)
    if report.problems:
        rows = [(p.level, p.message) for p in sorted(report.problems, key=lambda p: p.level != "error")]
        lines += ["problems", *_table(("LEVEL", "PROBLEM"), rows), ""]
    return "\n".join(lines + _summary(report))
