"""Contact sheets of sample videos: per prompt one PNG, a row per sampled epoch, a few frames per video, labelled.

Written to `samples/prompt-<n>.png` beside the videos, from run.json's `samples` record (the entrypoint after
each sample step; `launcher report` again from a pulled run folder). Pillow and PyAV are imported inside the
functions: the image has both (musubi-tuner needs them), the launcher only with lora-gym[dataset].
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from launcher.core.dataset import file_sha256

FRAMES = 4  # frames per video: start, two in between, end
THUMB_W = 192
LABEL_W = 112
HEADER_H = 56
PAD = 4
BACKGROUND, INK = (24, 24, 28), (235, 235, 235)


def pick(count: int, wanted: int = FRAMES) -> list[int]:
    """Evenly spread frame indices, first and last included."""
    if count <= wanted:
        return list(range(count))
    return [round(i * (count - 1) / (wanted - 1)) for i in range(wanted)]


def read_frames(path: Path, wanted: int = FRAMES) -> list:
    """A few RGB frames (PIL images) of one video."""
    import av

    with av.open(str(path)) as video:
        frames = [frame.to_image() for frame in video.decode(video=0)]
    return [frames[i] for i in pick(len(frames), wanted)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except (TypeError, OSError):
        return ImageFont.load_default()


def layout(rows: int, columns: int, thumb_h: int) -> tuple[int, int]:
    """(width, height) of a sheet: the label column and header plus the grid of thumbnails."""
    return LABEL_W + columns * (THUMB_W + PAD) + PAD, HEADER_H + rows * (thumb_h + PAD) + PAD


def draw_sheet(title: str, rows: list[tuple[str, list]], target: Path) -> tuple[int, int]:
    """One sheet: `rows` are (label, frames) pairs; returns the sheet's size."""
    from PIL import Image, ImageDraw

    first = rows[0][1][0]
    thumb_h = max(1, round(first.height * THUMB_W / first.width))
    columns = max(len(frames) for _, frames in rows)
    sheet = Image.new("RGB", layout(len(rows), columns, thumb_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    draw.multiline_text((PAD * 2, PAD * 2), "\n".join(textwrap.wrap(title, 110)[:3]), fill=INK, font=_font(13))
    for row, (label, frames) in enumerate(rows):
        top = HEADER_H + row * (thumb_h + PAD)
        draw.text((PAD * 2, top + thumb_h // 2 - 8), label, fill=INK, font=_font(16))
        for column, frame in enumerate(frames):
            sheet.paste(frame.convert("RGB").resize((THUMB_W, thumb_h)), (LABEL_W + column * (THUMB_W + PAD), top))
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target)
    return sheet.size


def write_sheets(run_dir: Path, record: dict) -> list[dict]:
    """A sheet per prompt with at least one video; each described with its path, size and sha256."""
    sheets = []
    for number, prompt in enumerate(record["prompts"], 1):
        videos = sorted((v for v in record["videos"] if v["prompt"] == number), key=lambda v: v["epoch"])
        if not videos:
            continue
        rows = [(f"epoch {v['epoch']}", read_frames(run_dir / v["path"])) for v in videos]
        title = f"prompt {number} (seed {prompt['seed']}, {prompt['frames']} frames): {prompt['text']}"
        target = run_dir / "samples" / f"prompt-{number}.png"
        size = draw_sheet(title, rows, target)
        sheets.append({"prompt": number, "path": str(target.relative_to(run_dir)), "epochs": [v["epoch"] for v in
                       videos], "width": size[0], "height": size[1], "sha256": file_sha256(target)})
    return sheets
