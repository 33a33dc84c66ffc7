"""Contact sheets: a row per sampled epoch, a few frames per video, labelled; listed in run.json with sha256."""

from __future__ import annotations

import json

from PIL import Image, ImageStat
from test_entrypoint import Container

from launcher.core.dataset import file_sha256
from launcher.media.sheet import FRAMES, HEADER_H, LABEL_W, PAD, THUMB_W, layout, pick, read_frames


def test_frames_are_spread_over_the_video_first_and_last_included():
    assert pick(33) == [0, 11, 21, 32] and pick(3) == [0, 1, 2] and pick(1) == [0]


def mean(image) -> list[float]:
    return ImageStat.Stat(image.convert("RGB")).mean


def test_a_run_writes_one_labelled_sheet_per_prompt_with_a_row_per_epoch(tmp_path, dataset):
    box = Container(tmp_path, dataset)
    box.stock_weights("wan21-t2v-1.3b")
    result = box.run(box.env("wan21-t2v-1.3b", LORA_GYM_SET="train.max_train_epochs=20 samples.frames=17"))
    assert result.returncode == 0, result.stderr + result.stdout
    [run_dir] = box.runs()
    record = json.loads((run_dir / "run.json").read_text())["samples"]
    assert record["epochs"] == [10, 20] and [s["prompt"] for s in record["sheets"]] == [1, 2]
    for sheet in record["sheets"]:
        path = run_dir / sheet["path"]
        assert path.name == f"prompt-{sheet['prompt']}.png" and file_sha256(path) == sheet["sha256"]
        image = Image.open(path)
        videos = [v for v in record["videos"] if v["prompt"] == sheet["prompt"]]
        first = read_frames(run_dir / videos[0]["path"])
        thumb_h = round(first[0].height * THUMB_W / first[0].width)
        assert image.size == layout(2, FRAMES, thumb_h) == (sheet["width"], sheet["height"])
        for row, video in enumerate(videos):  # each row holds its own epoch's frames, in order
            top = HEADER_H + row * (thumb_h + PAD)
            for column, frame in enumerate(read_frames(run_dir / video["path"])):
                left = LABEL_W + column * (THUMB_W + PAD)
                cell = image.crop((left, top, left + THUMB_W, top + thumb_h))
                assert all(abs(a - b) < 8 for a, b in zip(mean(cell), mean(frame), strict=True))
            label = image.crop((0, top, LABEL_W, top + thumb_h)).convert("L")
            assert label.getextrema()[1] > 200  # the "epoch N" text is drawn in the label column
        labels = [image.crop((0, HEADER_H + r * (thumb_h + PAD), LABEL_W, HEADER_H + r * (thumb_h + PAD) + thumb_h))
                  for r in range(2)]
        assert labels[0].tobytes() != labels[1].tobytes()  # "epoch 10" and "epoch 20"
        header = image.crop((0, 0, image.width, HEADER_H)).convert("L")
        assert header.getextrema()[1] > 200
    rows = [mean(read_frames(run_dir / v["path"])[0]) for v in record["videos"] if v["prompt"] == 1]
    assert rows[0] != rows[1]  # the fake's colour follows the LoRA: epochs differ
