"""Media musubi-tuner would silently skip are refused before anything starts (launcher/core/dataset.py).

musubi reads a media folder with one `glob(<folder>/*<ext>)` per extension of its exact-case list
(src/musubi_tuner/dataset/media_utils.py at 30c658c4, glob_images and glob_videos): no subfolder, no hidden
name, no mixed-case extension. A table through `launcher run --dry-run`, `launcher dataset check` and the image
entrypoint; and a generated property: every media-looking file put anywhere in a dataset is either in the plan's
layout, where musubi's own globbing finds it, or named in the refusal."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_input_classes import CHECK, DRY, Case, entry_env, write
from test_input_classes import test_bad_input_class as refused_by_every_program

from launcher.core.dataset import scan_dataset
from launcher.core.errors import UserError

# musubi-tuner's extension lists at 30c658c4 (media_utils.py IMAGE_EXTENSIONS, VIDEO_EXTENSIONS), as data: the
# oracle below globs with them the way musubi does, so the test does not take our own reading of them on trust.
MUSUBI_IMAGES = [".png", ".jpg", ".jpeg", ".webp", ".bmp", ".PNG", ".JPG", ".JPEG", ".WEBP", ".BMP", ".avif",
                 ".AVIF"]
MUSUBI_VIDEOS = [".mp4", ".webm", ".avi", ".mkv", ".mov", ".flv", ".wmv", ".m4v", ".mpg", ".mpeg", ".MP4", ".WEBM",
                 ".AVI", ".MKV", ".MOV", ".FLV", ".WMV", ".M4V", ".MPG", ".MPEG"]


def media(name: str, caption: bool = True):
    """A media file (bytes only: the structure check opens nothing) and, by default, its caption beside it."""
    def setup(dataset: Path, tmp: Path):
        write(name, b"\x89PNG not decoded here")(dataset, tmp)
        if caption:
            write(str(Path(name).with_suffix(".txt")), "zorbix in a nested folder")(dataset, tmp)
    return setup


LAYOUTS = [
    ("folder in images/", "images/extra/zorbix_more.png", ("images/extra/ holds 1 image/video file(s)",
                                                           "musubi-tuner would skip", "move them to images/")),
    ("folder in videos/", "videos/old/zorbix_clip.mp4", ("videos/old/ holds 1", "directly in videos/")),
    ("videos/ inside images/", "images/videos/zorbix_clip.mp4", ("images/videos/ holds 1",)),
    ("images/ inside images/", "images/images/zorbix_more.png", ("images/images/ holds 1",)),
    ("deep folder", "images/a/b/zorbix_deep.jpg", ("images/a/ holds 1", "e.g. images/a/b/zorbix_deep.jpg")),
    ("folder in the dataset", "clips/zorbix_clip.mp4", ("clips/ holds 1", "directly in the dataset folder")),
    ("hidden image", "images/.zorbix_more.png", ("images/.zorbix_more.png is hidden", "musubi-tuner would skip",
                                                 "without the leading dot")),
    ("hidden video at the root", ".zorbix_clip.mp4", (".zorbix_clip.mp4 is hidden",)),
]
CAPTION_STEM = ("caption named after the whole file", ("images/zorbix_beach_wave.png has no caption",
                                                       "rename images/zorbix_beach_wave.png.txt to "
                                                       "images/zorbix_beach_wave.txt"))


def _caption_with_the_extension(dataset: Path, tmp: Path):
    (dataset / "images/zorbix_beach_wave.txt").rename(dataset / "images/zorbix_beach_wave.png.txt")


CASES = [Case("skipped media", f"{program}: {name}", argv, words, media(path), env=entry_env() if argv is None
              else {}, report=argv is CHECK)
         for name, path, words in LAYOUTS for program, argv in (("run", DRY), ("check", CHECK), ("image", None))]
CASES += [Case("skipped media", f"{program}: {CAPTION_STEM[0]}", argv, CAPTION_STEM[1], _caption_with_the_extension,
               env=entry_env() if argv is None else {}, report=argv is CHECK)
          for program, argv in (("run", DRY), ("check", CHECK), ("image", None))]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_media_musubi_would_skip_are_refused(case, tmp_path, dataset, capsys, monkeypatch):
    refused_by_every_program(case, tmp_path, dataset, capsys, monkeypatch)


def test_macos_metadata_files_are_left_alone(dataset):
    (dataset / "images/._zorbix_beach_wave.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble, not an image
    assert scan_dataset(dataset).counts == {"image": 4, "video": 2}


# --- generated layouts against musubi's own globbing ----------------------------------------------------------

def musubi_reads(folder: Path, kind: str) -> set[str]:
    """What musubi globs in one media folder: `glob(escape(folder)/*<ext>)` per extension of its list."""
    found = set()
    for ext in MUSUBI_IMAGES if kind == "image" else MUSUBI_VIDEOS:
        found |= {os.path.basename(p) for p in glob.glob(os.path.join(glob.escape(str(folder)), "*" + ext))}
    return found


NAME = st.from_regex(r"[a-z][a-z_-]{0,5}", fullmatch=True)  # no `._x`: macOS metadata, left alone
EXT = st.sampled_from([".png", ".PNG", ".Png", ".jpg", ".JPEG", ".mp4", ".MP4", ".Mp4", ".webm", ".mov"])
PLACE = st.lists(st.sampled_from(["images", "videos", "sub", "images/deeper", ".cache"]), max_size=2).map(
    lambda parts: [p for part in parts for p in part.split("/")])
FILES = st.lists(st.tuples(PLACE, st.booleans(), NAME, EXT), min_size=1, max_size=5)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=FILES)
def test_every_media_file_is_read_by_musubi_or_named_in_the_refusal(files, tmp_path_factory):
    root = tmp_path_factory.mktemp("generated")
    made = []
    for place, hidden, name, ext in files:
        rel = Path(*place, ("." if hidden else "") + name + ext)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"media")
        (root / rel).with_suffix(".txt").write_text("zorbix")
        # A hidden folder (.git, .ipynb_checkpoints) is a tool's, not the user's data: left out on purpose.
        made += [] if any(part.startswith(".") for part in place) else [rel.as_posix()]
    skipped = [m for m in made if not _read_by_musubi(root, m)]
    try:
        layout = scan_dataset(root)
    except UserError as exc:
        said = " ".join(exc.problems)
        # Each file musubi would skip is named, or its top folder is (or, past 20 problems, counted).
        unnamed = [m for m in skipped if m not in said and not any(f"{part}/" in said for part in _folders(m))]
        assert not unnamed or "more problems" in said, (unnamed, exc.problems)
        return
    assert not skipped  # accepted: then musubi reads every one of them
    planned = set()
    for media_dir in layout.dirs:
        folder = root / media_dir.relpath
        assert set(media_dir.files) <= musubi_reads(folder, media_dir.kind)  # nothing planned that musubi skips
        planned |= {f"{media_dir.relpath}/{f}".lstrip("/") for f in media_dir.files}
    assert planned == set(made)  # and nothing the user put there is left out


def _read_by_musubi(root: Path, rel: str) -> bool:
    folder, name = os.path.split(rel)
    return folder in ("", "images", "videos") and name in musubi_reads(root / folder, "image") | musubi_reads(
        root / folder, "video")


def _folders(rel: str) -> list[str]:
    parts = rel.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
