"""Generate the tiny example dataset in examples/dataset/ (deterministic).

Four PNG stills and two short 16 fps mp4 clips of "zorbix", a fictional blob
character drawn with Pillow, each with a one-line caption next to it.

    .venv/bin/python examples/make_example_dataset.py
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
from PIL import Image, ImageDraw

FPS = 16
DEFAULT_OUT = Path(__file__).resolve().parent / "dataset"

Painter = Callable[[ImageDraw.ImageDraw, int, int], None]


# --- scenery ---------------------------------------------------------------


def _beach(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.rectangle([0, 0, w, h * 0.6], fill=(120, 190, 240))
    d.rectangle([0, h * 0.6, w, h * 0.7], fill=(40, 110, 190))
    d.rectangle([0, h * 0.7, w, h], fill=(236, 214, 160))
    d.ellipse([w * 0.78, h * 0.06, w * 0.78 + 28, h * 0.06 + 28], fill=(255, 225, 80))


def _forest(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.rectangle([0, 0, w, h], fill=(170, 215, 200))
    d.rectangle([0, h * 0.75, w, h], fill=(70, 130, 60))
    for i, x in enumerate(range(6, w, 34)):
        top = h * (0.25 + 0.08 * (i % 3))
        d.rectangle([x + 10, h * 0.6, x + 16, h * 0.78], fill=(100, 70, 40))
        d.polygon([(x, h * 0.65), (x + 26, h * 0.65), (x + 13, top)], fill=(30, 95 + 12 * (i % 3), 45))


def _night_city(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.rectangle([0, 0, w, h], fill=(20, 24, 60))
    d.ellipse([w * 0.1, h * 0.05, w * 0.1 + 22, h * 0.05 + 22], fill=(240, 240, 210))
    for i, x in enumerate(range(0, w, 24)):
        top = h * (0.45 + 0.1 * ((i * 7) % 4))
        d.rectangle([x, top, x + 20, h], fill=(45, 45, 80))
        for wy in range(int(top) + 6, h - 6, 12):
            if (x + wy) % 3:
                d.rectangle([x + 5, wy, x + 9, wy + 4], fill=(250, 210, 90))


def _snow(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.rectangle([0, 0, w, h], fill=(200, 220, 240))
    d.polygon([(0, h * 0.7), (w * 0.35, h * 0.2), (w * 0.7, h * 0.7)], fill=(120, 130, 150))
    d.polygon([(w * 0.4, h * 0.7), (w * 0.75, h * 0.3), (w, h * 0.6), (w, h * 0.7)], fill=(100, 110, 135))
    d.polygon([(w * 0.27, h * 0.32), (w * 0.35, h * 0.2), (w * 0.43, h * 0.32)], fill=(250, 250, 255))
    d.rectangle([0, h * 0.7, w, h], fill=(245, 248, 252))


def _meadow(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.rectangle([0, 0, w, h * 0.65], fill=(150, 205, 245))
    d.rectangle([0, h * 0.65, w, h], fill=(110, 180, 80))
    for x in range(8, w, 29):
        y = h * 0.72 + (x * 13) % 30
        d.ellipse([x, y, x + 6, y + 6], fill=(245, 110, 160))


def _desert(d: ImageDraw.ImageDraw, w: int, h: int) -> None:
    d.rectangle([0, 0, w, h * 0.6], fill=(250, 190, 120))
    d.ellipse([w * 0.45, h * 0.2, w * 0.45 + 40, h * 0.2 + 40], fill=(255, 120, 60))
    d.rectangle([0, h * 0.6, w, h], fill=(220, 170, 100))
    d.rectangle([w * 0.15, h * 0.35, w * 0.15 + 8, h * 0.65], fill=(60, 130, 70))
    d.rectangle([w * 0.15 - 8, h * 0.42, w * 0.15, h * 0.46], fill=(60, 130, 70))


# --- the character ---------------------------------------------------------


def draw_zorbix(
    d: ImageDraw.ImageDraw, cx: float, cy: float, r: float, wave: bool = False, look: float = 0.0
) -> None:
    """A teal blob with two eyes and an antenna; `look` shifts the pupils (-1..1)."""
    body = (40, 190, 170)
    d.ellipse([cx - r, cy - r * 0.9, cx + r, cy + r * 0.9], fill=body, outline=(20, 90, 80), width=2)
    d.line([cx, cy - r * 0.9, cx + r * 0.2, cy - r * 1.4], fill=(20, 90, 80), width=2)
    d.ellipse([cx + r * 0.1, cy - r * 1.55, cx + r * 0.35, cy - r * 1.3], fill=(250, 90, 120))
    for ex in (cx - r * 0.35, cx + r * 0.35):
        er = r * 0.22
        d.ellipse([ex - er, cy - r * 0.35 - er, ex + er, cy - r * 0.35 + er], fill=(255, 255, 255))
        px = ex + look * er * 0.45
        pr = er * 0.5
        d.ellipse([px - pr, cy - r * 0.35 - pr, px + pr, cy - r * 0.35 + pr], fill=(20, 20, 30))
    d.arc([cx - r * 0.35, cy - r * 0.1, cx + r * 0.35, cy + r * 0.4], 20, 160, fill=(20, 60, 55), width=2)
    if wave:
        d.line([cx + r * 0.9, cy, cx + r * 1.4, cy - r * 0.7], fill=body, width=max(3, int(r * 0.2)))


# --- stills ----------------------------------------------------------------


@dataclass(frozen=True)
class Still:
    stem: str
    size: tuple[int, int]
    scene: Painter
    blob: tuple[float, float, float]  # centre x, centre y (fractions of w, h), radius (fraction of min side)
    wave: bool
    look: float
    caption: str


STILLS = [
    Still(
        "zorbix_beach_wave",
        size=(256, 144),
        scene=_beach,
        blob=(0.45, 0.55, 0.35),
        wave=True,
        look=0.0,
        caption="A close-up of zorbix waving at the camera on a sunny beach.",
    ),
    Still(
        "zorbix_forest_look",
        size=(256, 144),
        scene=_forest,
        blob=(0.3, 0.75, 0.18),
        wave=False,
        look=1.0,
        caption="A wide shot of zorbix looking to the right in front of pine trees in a green forest.",
    ),
    Still(
        "zorbix_city_night",
        size=(144, 256),
        scene=_night_city,
        blob=(0.5, 0.8, 0.25),
        wave=False,
        look=-0.6,
        caption="A full-body shot of zorbix standing on a street at night, with lit city windows behind.",
    ),
    Still(
        "zorbix_snow_wave",
        size=(144, 256),
        scene=_snow,
        blob=(0.5, 0.5, 0.3),
        wave=True,
        look=0.0,
        caption="A medium shot of zorbix waving in front of snowy mountains.",
    ),
]


def render_still(still: Still) -> Image.Image:
    w, h = still.size
    img = Image.new("RGB", still.size)
    d = ImageDraw.Draw(img)
    still.scene(d, w, h)
    fx, fy, fr = still.blob
    draw_zorbix(d, fx * w, fy * h, fr * min(w, h), wave=still.wave, look=still.look)
    return img


# --- clips -----------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    stem: str
    frames: int
    scene: Painter
    bounce: bool
    caption: str


CLIPS = [
    Clip(
        "zorbix_meadow_glide",
        frames=49,
        scene=_meadow,
        bounce=False,
        caption="A side view of zorbix gliding from left to right across a flowery meadow.",
    ),
    Clip(
        "zorbix_desert_hop",
        frames=33,
        scene=_desert,
        bounce=True,
        caption="A wide shot of zorbix hopping across the sand in a desert at sunset.",
    ),
]

CLIP_SIZE = (256, 144)


def render_frame(clip: Clip, i: int) -> Image.Image:
    w, h = CLIP_SIZE
    img = Image.new("RGB", CLIP_SIZE)
    d = ImageDraw.Draw(img)
    clip.scene(d, w, h)
    t = i / (clip.frames - 1)
    r = h * 0.16
    cx = r * 1.2 + t * (w - r * 2.4)
    cy = h * 0.7
    if clip.bounce:
        cy -= abs(math.sin(t * math.pi * 3)) * h * 0.3
    draw_zorbix(d, cx, cy, r, look=0.8)
    return img


def pick_codec() -> str:
    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_clip(clip: Clip, path: Path) -> None:
    codec = pick_codec()
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height = CLIP_SIZE
        stream.pix_fmt = "yuv420p"
        # Single-threaded for byte-for-byte reproducible output.
        stream.options = {"crf": "28", "preset": "medium", "threads": "1"} if codec == "libx264" else {}
        stream.codec_context.thread_count = 1
        for i in range(clip.frames):
            frame = av.VideoFrame.from_image(render_frame(clip, i))
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def probe_clip(path: Path) -> tuple[int, float]:
    """Decode every frame back; return (frame count, average fps)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, float(stream.average_rate)


# --- main ------------------------------------------------------------------


def write_caption(path: Path, caption: str) -> None:
    path.write_text(caption + "\n", encoding="utf-8")


def build(out: Path) -> list[Path]:
    images, videos = out / "images", out / "videos"
    images.mkdir(parents=True, exist_ok=True)
    videos.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for still in STILLS:
        png = images / f"{still.stem}.png"
        render_still(still).save(png, format="PNG", optimize=True)
        write_caption(images / f"{still.stem}.txt", still.caption)
        written += [png, images / f"{still.stem}.txt"]
    for clip in CLIPS:
        mp4 = videos / f"{clip.stem}.mp4"
        write_clip(clip, mp4)
        write_caption(videos / f"{clip.stem}.txt", clip.caption)
        written += [mp4, videos / f"{clip.stem}.txt"]
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output dir (default: %(default)s)")
    args = parser.parse_args()
    written = build(args.out)
    total = sum(p.stat().st_size for p in written)
    for p in written:
        print(f"{p.stat().st_size:>8}  {p.relative_to(args.out)}")
    print(f"{total:>8}  total bytes ({pick_codec()})")
    for clip in CLIPS:
        count, fps = probe_clip(args.out / "videos" / f"{clip.stem}.mp4")
        status = "ok" if (count, fps) == (clip.frames, FPS) else "MISMATCH"
        print(f"decoded {clip.stem}.mp4: {count} frames at {fps:g} fps (expected {clip.frames}) {status}")


if __name__ == "__main__":
    main()
