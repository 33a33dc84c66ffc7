"""Probing images (Pillow) and videos (PyAV): size, frame count, fps, duration from the headers; then, unless
the caller asks for headers only, decoding what training will read (`decode_image`, `decode_video`).

A header can be whole while the pixels behind it are not (a truncated PNG, an MP4 whose frames are corrupt):
only decoding finds that. Headers alone take milliseconds per file; decoding takes what musubi's own
caching step will take for the same frames, on the CPU of the user's machine instead of a rented GPU's. Pillow and
PyAV are imported inside the functions (see launcher.media.require). Any failure to open is a finding, not
a crash: it comes back as `Probe.error`, and the report names the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Probe:
    width: int = 0
    height: int = 0
    frames: int = 1  # 1 for images
    fps: float | None = None
    duration: float | None = None  # seconds
    frames_estimated: bool = False  # frames = duration x fps, the container had no count
    error: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


def _reason(exc: Exception, path: Path) -> str:
    """The library's message without the absolute path, which the report already shows relative."""
    text = getattr(exc, "strerror", None) or str(exc)
    for form in (repr(str(path)), str(path)):
        text = text.replace(form, "")
    return text.strip(" :") or type(exc).__name__


def probe_image(path: Path) -> Probe:
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as exc:  # Pillow raises many types for broken files; each is a finding about this file
        return Probe(error=f"cannot be opened as an image ({_reason(exc, path)})")
    return Probe(width, height)


def _frame_rate(stream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _duration(stream, container) -> float | None:
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / av.time_base if container.duration else None


def _video_probe(container) -> Probe:
    if not container.streams.video:
        return Probe(error="has no video stream")
    stream = container.streams.video[0]
    width, height = stream.codec_context.width, stream.codec_context.height
    fps, duration = _frame_rate(stream), _duration(stream, container)
    frames, estimated = stream.frames, False
    if not frames and duration and fps:
        # Matroska/WebM record no frame count; duration x rate is exact for constant-rate clips.
        frames, estimated = round(duration * fps), True
    if not frames:
        frames = sum(1 for _ in container.decode(stream))  # the last resort: no count, no duration
        duration = duration or (frames / fps if fps else None)
    if not width or not height:
        return Probe(error="has no picture size in its header")
    return Probe(width, height, frames, fps, duration, estimated)


def probe_video(path: Path) -> Probe:
    import av

    try:
        with av.open(str(path)) as container:
            return _video_probe(container)
    except Exception as exc:  # PyAV raises FFmpegError subclasses, OSError, ValueError...: all are findings
        return Probe(error=f"cannot be opened as a video ({_reason(exc, path)})")


def probe(path: Path, kind: str) -> Probe:
    return probe_image(path) if kind == "image" else probe_video(path)


def decode_image(path: Path) -> str | None:
    """None when every pixel decodes, else why not."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
    except Exception as exc:  # truncated data, bad chunks, decompression bombs: each a finding about this file
        return f"does not decode ({_reason(exc, path)})"
    return None


def decode_video(path: Path, frames: int) -> tuple[int, str | None]:
    """Decode the first `frames` frames (those training reads, from the first to the last one used):
    how many decoded, and why the rest did not (None when all did)."""
    import av

    decoded = 0
    try:
        with av.open(str(path)) as container:
            for _ in container.decode(container.streams.video[0]):
                decoded += 1
                if decoded >= frames:
                    return decoded, None
    except Exception as exc:  # corrupt packets surface here as FFmpeg errors
        return decoded, _reason(exc, path)
    return decoded, "the stream ends early"
