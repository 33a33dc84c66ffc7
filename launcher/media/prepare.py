"""`launcher dataset prepare`: a copy of a dataset with every video at 16 fps and 4N+1 frames.

musubi-tuner (without `source_fps`, which the plan never sets) trains on every frame of a clip as if it were
16 fps, so a 30 fps clip teaches slow motion; and the Wan VAE packs frames as 4N+1, so musubi's `full` mode
drops the remainder. This resamples by time (each 1/16 s shows the source frame on screen at that moment,
dropping or repeating frames as needed), then trims the tail to 4N+1 frames.

Always into a new folder: the source is never changed, so a bad conversion costs nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from fractions import Fraction
from pathlib import Path

from launcher.core.dataset import CAPTION_EXTENSION
from launcher.core.errors import UserError
from launcher.core.inputs import new_dir, writable_dir
from launcher.media import TRAIN_FPS
from launcher.media.check import media_files
from launcher.media.probe import Probe, probe_video


def _refuse_unsafe(source: Path, destination: Path) -> None:
    if not source.is_dir():
        what = "is not a folder" if source.exists() else "not found"
        raise UserError(f"source {source} {what}: pass the dataset folder to copy from")
    if destination.is_dir() and not any(destination.iterdir()):
        writable_dir(destination, "destination")  # an empty folder made for the copy is fine
    else:
        new_dir(destination, "destination")
    src, dst = source.resolve(), destination.resolve()
    if dst == src or src in dst.parents:
        raise UserError(f"{destination} is inside {source}: choose a folder outside it (the source is never "
                        "changed)")


def resample_schedule(times: list[float], fps: float = TRAIN_FPS) -> list[int]:
    """For each output frame (every 1/fps s), the index of the source frame shown then; trimmed to 4N+1."""
    if not times:
        return []
    last = times[-1] - times[-2] if len(times) > 1 else 1 / fps  # how long the last frame stays on screen
    # An output frame needs the source to cover at least half its 1/fps slot: container timestamps are
    # rounded (WebM to milliseconds), and a sliver past the end must not add a frame.
    end, picks, i = times[-1] + last - 0.5 / fps, [], 0
    while times[0] + len(picks) / fps < end:
        moment = times[0] + len(picks) / fps
        while i + 1 < len(times) and times[i + 1] <= moment + 1e-6:
            i += 1
        picks.append(i)
    return picks[: (len(picks) - 1) // 4 * 4 + 1]


def _frame_times(path: Path) -> list[float]:
    """Presentation times of every frame, from the packets: no decoding."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sorted(float(p.pts * stream.time_base) for p in container.demux(stream) if p.pts is not None
                      and p.size)


def _encode(source: Path, target: Path, picks: list[int]) -> None:
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    repeats = Counter(picks)
    with av.open(str(source)) as inp, av.open(str(target), mode="w", format="mp4") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream(codec, rate=TRAIN_FPS)
        # yuv420p, the format every player and musubi's decoder read, needs even sides.
        s_out.width, s_out.height = s_in.codec_context.width // 2 * 2, s_in.codec_context.height // 2 * 2
        s_out.pix_fmt = "yuv420p"
        if codec == "libx264":
            s_out.options = {"crf": "17"}  # visually lossless: the training data should not lose detail here
        written = 0
        for index, frame in enumerate(inp.decode(s_in)):
            for _ in range(repeats[index]):
                picture = frame.reformat(width=s_out.width, height=s_out.height, format="yuv420p")
                # Renumber at 16 fps: the source's timestamps are in its own rate and would repeat on duplicates.
                picture.pts, picture.time_base = written, Fraction(1, TRAIN_FPS)
                out.mux(s_out.encode(picture))
                written += 1
            if index >= picks[-1]:
                break
        out.mux(s_out.encode())


def _video(source: Path, target_dir: Path, probed: Probe) -> str:
    """Write the 16 fps, 4N+1 copy of one video; a note on what was done."""
    if probed.fps and abs(probed.fps - TRAIN_FPS) < 0.01 and not probed.frames_estimated and probed.frames % 4 == 1:
        shutil.copy2(source, target_dir / source.name)  # already right: no generation loss
        return f"copied ({probed.frames} frames at {TRAIN_FPS} fps)"
    picks = resample_schedule(_frame_times(source))
    _encode(source, target_dir / f"{source.stem}.mp4", picks)
    return f"{probed.frames} frames at {probed.fps or 0:g} fps -> {len(picks)} frames at {TRAIN_FPS} fps"


def _converted(path: Path, relpath: Path, target_dir: Path, probed: Probe) -> str:
    try:
        return _video(path, target_dir, probed)
    except Exception as exc:  # a stream that breaks mid-file: name it; the partial copy is removed
        raise UserError(f"{relpath.as_posix()} could not be converted ({exc}): re-encode it or move it out, "
                        "and run again (nothing was written)") from None


class _Progress:
    """tqdm on stderr when it is installed, else one plain line per file."""

    def __init__(self, total: int):
        self.total, self.done = total, 0
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            self.bar = tqdm(total=total, unit="file", file=sys.stderr, desc="prepare")

    def step(self, name: str, note: str) -> None:
        self.done += 1
        if self.bar is None:
            print(f"[{self.done}/{self.total}] {name}: {note}", file=sys.stderr, flush=True)
        else:
            self.bar.set_postfix_str(name, refresh=False)
            self.bar.update()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _probe_videos(source: Path, files) -> dict[Path, Probe]:
    """Every video's header, before anything is written: a broken one stops the copy with nothing done."""
    probes = {path: probe_video(path) for _, kind, path in files if kind == "video"}
    broken = [f"{path.relative_to(source).as_posix()} {p.error}: re-encode it or move it out (nothing was written)"
              for path, p in probes.items() if p.error]
    if broken:
        raise UserError(*broken)
    return probes


def prepare_dataset(source: str | Path, destination: str | Path) -> str:
    """Copy the media of `source` and their captions into the new folder `destination`; a one-line summary."""
    source, destination = Path(source), Path(destination)
    _refuse_unsafe(source, destination)
    files = media_files(source)
    if not files:
        raise UserError(f"{source} has no images or videos to copy (nothing was written)")
    probes = _probe_videos(source, files)
    # Written beside the destination and renamed into place only when complete: a failure leaves nothing.
    work = destination.with_name(f".{destination.name}.partial-{os.getpid()}")
    progress, converted = _Progress(len(files)), 0
    try:
        work.mkdir()
        for _, kind, path in files:
            relpath = path.relative_to(source)
            target_dir = work / relpath.parent
            target_dir.mkdir(parents=True, exist_ok=True)
            caption = path.with_suffix(CAPTION_EXTENSION)
            if caption.is_file():
                shutil.copy2(caption, target_dir / caption.name)
            if kind == "image":
                shutil.copy2(path, target_dir / path.name)
                note = "copied"
            else:
                note = _converted(path, relpath, target_dir, probes[path])
                converted += not note.startswith("copied")
            progress.step(relpath.as_posix(), note)
        if destination.is_dir():
            destination.rmdir()  # the empty folder the user made for it (checked above)
        work.rename(destination)
    finally:
        progress.close()
        shutil.rmtree(work, ignore_errors=True)
    counts = Counter(kind for _, kind, _ in files)
    return (f"wrote {counts['image']} images and {counts['video']} videos ({converted} resampled to "
            f"{TRAIN_FPS} fps and 4N+1 frames) to {destination}")
