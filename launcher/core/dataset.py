"""Reading a dataset folder into a `DatasetLayout` (the plan's input), with the checks that must pass
before any GPU time is spent: media present, every file captioned in UTF-8, no stem clashes.

Media live in the dataset folder itself and/or its `images/` and `videos/` subfolders; each media file
has a caption `<stem>.txt` beside it (musubi-tuner's `caption_extension`).

musubi-tuner reads a media folder with `glob(<folder>/*<ext>)` per extension (src/musubi_tuner/dataset/
media_utils.py, glob_images and glob_videos, at 30c658c4): not recursive, exact-case extensions, and Python's
glob never matches a name starting with '.'. A media file it would not glob is refused here, never planned
and then silently skipped: one line each, saying where to move it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from launcher.core.errors import UserError
from launcher.core.hashes import sha256_files
from launcher.core.inputs import has_control, inside

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv")
CAPTION_EXTENSION = ".txt"
SUBFOLDERS = ("images", "videos")
MAX_LISTED = 20  # beyond this many problems, the rest are counted, not listed


@dataclass(frozen=True)
class MediaDir:
    """One folder's media of one kind: a musubi `image_directory` or `video_directory`."""

    relpath: str  # "" for the dataset root, else "images" or "videos"
    kind: str  # "image" or "video"
    files: tuple[str, ...]
    digest: str  # sha256 over every media file and caption in it: the cache key's content part
    captions: tuple[str, ...] = ()  # one per file, whitespace-collapsed: the plan's default sample prompts
    sha256s: tuple[tuple[str, str], ...] = ()  # one per file: (media sha256, caption sha256), what run.json lists


@dataclass(frozen=True)
class DatasetLayout:
    dirs: tuple[MediaDir, ...]

    def of_kind(self, kind: str) -> tuple[MediaDir, ...]:
        return tuple(d for d in self.dirs if d.kind == kind)

    @property
    def counts(self) -> dict[str, int]:
        return {kind: sum(len(d.files) for d in self.of_kind(kind)) for kind in ("image", "video")}


def looks_like_media(name: str) -> bool:
    """An image or video extension in any case: what a user means as training data."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS


def is_hidden(name: str) -> bool:
    return name.startswith(".")  # Python's glob (musubi's) never matches these with `*.png`


def media_kind(name: str) -> str | None:
    """'image', 'video' or None: what musubi's glob reads. It globs exact-case extensions, so only all-lower or
    all-upper count, and never a hidden name (see the module's docstring)."""
    suffix = Path(name).suffix
    if is_hidden(name) or suffix not in (suffix.lower(), suffix.upper()):
        return None
    lower = suffix.lower()
    return "image" if lower in IMAGE_EXTENSIONS else "video" if lower in VIDEO_EXTENSIONS else None


def file_sha256(path: Path) -> str:
    # One implementation for the whole project: the weight fetcher's, which is standard library only.
    from launcher.weights.fetch import sha256_file

    return sha256_file(path)


def caption_text(raw: bytes) -> str | None:
    """The caption a file holds, as musubi will read it; None when it is not UTF-8. A byte-order mark,
    zero-width and other invisible format characters do not count as text: such a caption is empty ("")."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    visible = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return visible.strip()


def caption_problem(media: Path, shown: str) -> str | None:
    """Why the caption beside `media` cannot train (missing, not UTF-8, empty), or None. `launcher caption`
    and `launcher run` both ask this, so they agree on what a caption is."""
    caption = media.with_suffix(CAPTION_EXTENSION)
    shown_caption = str(Path(shown).with_suffix(CAPTION_EXTENSION))
    if caption.is_dir():
        return f"{shown_caption} is a folder, not a caption: move it out and write the caption in a file"
    if not caption.is_file():
        other_case = next((p for p in media.parent.glob(glob.escape(media.stem) + ".[tT][xX][tT]")
                           if p.is_file() and p.name != caption.name), None)
        if other_case is not None:
            return (f"{shown} has no caption: rename {Path(shown).with_name(other_case.name)} to {shown_caption} "
                    "(musubi-tuner reads only a lower-case .txt)")
        if media.with_name(media.name + CAPTION_EXTENSION).is_file():  # `beach.png.txt`: musubi reads `beach.txt`
            return (f"{shown} has no caption: rename {shown}{CAPTION_EXTENSION} to {shown_caption} (musubi-tuner "
                    "reads the caption of a file from its name without the extension)")
        return f"{shown} has no caption: write {shown_caption} (one line describing it)"
    text = caption_text(caption.read_bytes())
    if text is None:
        return f"{shown_caption} is not UTF-8 text: re-save it as UTF-8"
    if not text:
        return f"{shown_caption} is empty (or only invisible characters): describe the {media_kind(media.name)} in it"
    return None


def _link_problem(path: Path, shown: str, root: Path) -> str | None:
    """A symlink the container cannot follow: dangling, or pointing out of the dataset folder it mounts."""
    if not path.is_symlink():
        return None
    if not path.exists():
        return f"{shown} is a symlink to {os.readlink(path)}, which does not exist: copy the real file in its place"
    if not inside(root, path):
        return (f"{shown} links outside the dataset folder (to {path.resolve()}), where the container cannot see "
                "it: copy the file in its place")
    return None


def _nested_media(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if looks_like_media(p.name) and not p.is_dir())


def _folder_problem(path: Path, shown: str, at_root: bool) -> str | None:
    """A folder inside a media folder: musubi-tuner globs no subfolder, so what is in it would be skipped."""
    if at_root and path.name in SUBFOLDERS:
        return None
    parent = shown.rsplit("/", 1)[0] + "/" if "/" in shown else "the dataset folder"
    if media := _nested_media(path):
        first = f"{shown}/{media[0].relative_to(path).as_posix()}"
        return (f"{shown}/ holds {len(media)} image/video file(s) musubi-tuner would skip (it reads only the files "
                f"directly in {parent}, no subfolder), e.g. {first}: move them to images/ or videos/, or remove "
                f"{shown}/")
    return f"unexpected folder {shown}/: media go in the dataset folder, images/ or videos/; move it out"


def _other_file_problem(path: Path, shown: str, media_stems: set[str], at_root: bool) -> str | None:
    if is_hidden(path.name):
        # `._x.png` is macOS's AppleDouble metadata beside a copied x.png, never an image: left alone.
        if looks_like_media(path.name) and not path.is_dir() and not path.name.startswith("._"):
            return (f"{shown} is hidden (its name starts with '.'), so musubi-tuner would skip it: rename it "
                    "without the leading dot, or remove it")
        return None
    if path.is_dir():
        if path.suffix.lower() == CAPTION_EXTENSION and path.with_suffix("").name in media_stems:
            return None  # a folder in a caption's place: reported once, as that media file's caption problem
        return _folder_problem(path, shown, at_root)
    if not path.is_file():
        return f"{shown} is not a regular file (a pipe, socket or device): move it out of the dataset"
    if path.name in SUBFOLDERS:
        return f"{shown} is a file: {shown}/ must be a folder of {path.name}; rename or move the file"
    if path.suffix.lower() == CAPTION_EXTENSION:
        # A wrong-case caption of a media file is reported once, as that file's missing caption.
        return None if path.suffix == CAPTION_EXTENSION or path.stem in media_stems else (
            f"{shown}: write the caption's extension as {CAPTION_EXTENSION} (musubi-tuner reads only lower case)")
    if path.suffix.lower() in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS:
        return f"{shown}: write the extension as {path.suffix.lower()} (musubi-tuner skips mixed-case ones)"
    supported = ", ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    return f"{shown}: unsupported file type {path.suffix or '(none)'}: convert it to one of {supported} " \
           "or move it out of the dataset"


def _stem_clashes(media: list[Path], prefix: str) -> list[str]:
    by_stem: dict[str, list[str]] = {}
    for path in media:
        by_stem.setdefault(path.stem, []).append(path.name)
    return [f"{' and '.join(prefix + n for n in sorted(names))} share the stem {stem!r} and so one caption: "
            "rename one of them" for stem, names in sorted(by_stem.items()) if len(names) > 1]


def _media_dir(relpath: str, kind: str, media: list[Path], sha: dict[Path, str]) -> MediaDir:
    digest, captions, sums = hashlib.sha256(), [], []
    for path in media:
        caption = path.with_suffix(CAPTION_EXTENSION)
        digest.update(f"{path.name}\0{sha[path]}\0{sha[caption]}\n".encode())
        captions.append(" ".join((caption_text(caption.read_bytes()) or "").split()))
        sums.append((sha[path], sha[caption]))
    return MediaDir(relpath, kind, tuple(p.name for p in media), digest.hexdigest(), tuple(captions), tuple(sums))


def _entry_problem(path: Path, shown: str, root: Path) -> str | None:
    """Problems that make a file unusable whatever its type: a control character in its name, a bad link."""
    if has_control(path.name):
        return f"file name {shown!r} has control characters (newline, tab, ...): rename it"
    return _link_problem(path, shown, root)


def _scan_folder(folder: Path, relpath: str, problems: list[str], root: Path) -> list[tuple[str, str, list[Path]]]:
    prefix = f"{relpath}/" if relpath else ""
    entries = []
    for path in sorted(folder.iterdir()):
        problem = _entry_problem(path, prefix + path.name, root)
        problems.extend([problem] if problem else [])
        entries += [] if problem else [path]
    media = [p for p in entries if p.is_file() and media_kind(p.name)]
    media_set = set(media)  # membership below is per file: a list would make big folders quadratic
    stems = {p.stem for p in media}
    for path in entries:
        if path not in media_set:
            problems.extend(filter(None, [_other_file_problem(path, prefix + path.name, stems, not relpath)]))
    problems.extend(_stem_clashes(media, prefix))
    problems.extend(filter(None, (caption_problem(p, prefix + p.name) for p in media)))
    by_kind = {kind: [p for p in media if media_kind(p.name) == kind] for kind in ("image", "video")}
    return [(relpath, kind, files) for kind, files in by_kind.items() if files]


def check_structure(root: str | Path) -> list[tuple[str, str, list[Path]]]:
    """Every (folder, kind, media files) of a sound dataset folder, or UserError listing every problem in it:
    captions, stem clashes, stray files, links. Reads the captions; hashes nothing."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"dataset folder {root} not found: pass --dataset with a folder of images/videos "
                        "and their .txt captions")
    if not root.is_dir():
        raise UserError(f"dataset {root} is not a folder: pass the folder that holds the media files")
    problems: list[str] = []
    dirs = _scan_folder(root, "", problems, root)
    for sub in SUBFOLDERS:
        if (root / sub).is_dir():
            dirs += _scan_folder(root / sub, sub, problems, root)
    if not dirs and not problems:
        problems.append(f"dataset folder {root} has no images or videos: add {', '.join(IMAGE_EXTENSIONS)} "
                        f"or {', '.join(VIDEO_EXTENSIONS)} files with .txt captions (or images/ and videos/)")
    if problems:
        extra = len(problems) - MAX_LISTED
        raise UserError(*problems[:MAX_LISTED], *([f"... and {extra} more problems"] if extra > 0 else []))
    return dirs


def scan_dataset(root: str | Path) -> DatasetLayout:
    """The layout of a dataset folder, with the content digests that name its caches, or UserError listing
    every problem found in it."""
    dirs = check_structure(root)
    # Hash only a sound dataset: every caption exists and is readable by now.
    files = [f for _, _, media in dirs for path in media for f in (path, path.with_suffix(CAPTION_EXTENSION))]
    sha = sha256_files(files)
    return DatasetLayout(tuple(_media_dir(*found, sha) for found in dirs))
