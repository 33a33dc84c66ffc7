"""Cache files as musubi-tuner v0.3.4 names, writes, merges, deletes and reads them (a test double).

Names (src/musubi_tuner/dataset/image_video_dataset.py): latents `<stem>_<W>x<H>_wan.safetensors` for an image,
`<stem>_<pos:05d>-<frames:03d>_<W>x<H>_wan.safetensors` per video window, text-encoder outputs
`<stem>_wan_te.safetensors`. The double decodes no media, so its sizes are the entry's resolution and its
windows start at stand-in positions. The files are valid safetensors (one U8 tensor, musubi's metadata keys);
FAKE_MUSUBI_WRITE_S=<seconds> makes each file take that long to write, in chunks, so a reader can catch one
half-written. Like musubi, the text-encoder script reads a file it is about to replace (merge_existing in
dataset/cache_io.py), each script deletes files of its kind that are not in the dataset unless --keep_cache
(cache_latents.py encode_datasets, cache_text_encoder_outputs.py post_process_cache_files), and the trainer
reads every latents file that has its text-encoder file and skips, with a warning, one that has not
(prepare_for_training); a file cut short fails it as safetensors does.
FAKE_MUSUBI_MEET=<folder> makes a cache script wait (30 s at most) until a second process of the same script
has come, so two containers' cache steps certainly overlap.
"""

import hashlib
import json
import os
import sys
import time
import tomllib
from pathlib import Path

from launcher.core.dataset import CAPTION_EXTENSION, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

ARCH = "wan"
PAYLOAD = 4096
CHUNKS = 8


def datasets(config: str) -> list[dict]:
    return tomllib.loads(Path(config).read_text())["datasets"]


def _media(entry: dict) -> list[Path]:
    folder = Path(entry.get("image_directory") or entry["video_directory"])
    kinds = IMAGE_EXTENSIONS if "image_directory" in entry else VIDEO_EXTENSIONS
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in kinds)


def latent_names(entry: dict) -> list[str]:
    size = "{:04d}x{:04d}".format(*entry["resolution"])
    if "image_directory" in entry:
        return [f"{p.stem}_{size}_{ARCH}.safetensors" for p in _media(entry)]
    windows = [(k * frames, frames) for frames in entry.get("target_frames", [1])
               for k in range(entry.get("frame_sample", 1) if entry.get("frame_extraction") == "uniform" else 1)]
    return [f"{p.stem}_{pos:05d}-{frames:03d}_{size}_{ARCH}.safetensors" for p in _media(entry)
            for pos, frames in windows]


def captions(entry: dict) -> dict[str, str]:
    """Text-encoder cache file name -> caption, for every media file with a caption."""
    return {f"{p.stem}_{ARCH}_te.safetensors": p.with_suffix(CAPTION_EXTENSION).read_text().strip()
            for p in _media(entry) if p.with_suffix(CAPTION_EXTENSION).is_file()}


def write(path: Path, metadata: dict[str, str]) -> None:
    header = json.dumps({"cache": {"dtype": "U8", "shape": [PAYLOAD], "data_offsets": [0, PAYLOAD]},
                         "__metadata__": metadata}).encode()
    seed = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).digest()
    payload = (seed * (PAYLOAD // len(seed) + 1))[:PAYLOAD]
    pause = float(os.environ.get("FAKE_MUSUBI_WRITE_S", "0")) / CHUNKS
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:  # safetensors' save_file: truncate, then write
        out.write(len(header).to_bytes(8, "little") + header)
        for i in range(CHUNKS):
            out.flush()
            time.sleep(pause)
            out.write(payload[i * PAYLOAD // CHUNKS:(i + 1) * PAYLOAD // CHUNKS])


def read(path: Path) -> dict[str, str]:
    """The file's metadata; exits 1 with safetensors' own words when it is cut short."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    try:
        header = json.loads(data[8:8 + size])
        whole = len(data) == 8 + size + header["cache"]["data_offsets"][1]
    except (ValueError, KeyError):
        whole = False
    if not whole:
        print(f"fake musubi: safetensors_rust.SafetensorError: Error while deserializing header: incomplete "
              f"metadata, file not fully covered: {path}", file=sys.stderr)
        sys.exit(1)
    return header["__metadata__"]


def remove_others(found: set[Path], keep: set[Path], args: list[str]) -> None:
    """Deletes the cache files `found` that are not in the dataset (`keep`), unless --keep_cache."""
    if "--keep_cache" in args:
        return
    for path in sorted(found - keep):
        path.unlink(missing_ok=True)
        print(f"Removed old cache file: {path}")


def meet(script: str) -> None:
    folder = os.environ.get("FAKE_MUSUBI_MEET")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / f"{script}.{os.getpid()}").touch()
    deadline = time.monotonic() + 30
    while len(list(Path(folder).glob(f"{script}.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)


def training_items(config: str) -> int:
    """What prepare_for_training finds: latents files with their text-encoder file, each read whole."""
    count = 0
    for entry in datasets(config):
        folder = Path(entry["cache_directory"])
        for latents in sorted(folder.glob(f"*_{ARCH}.safetensors")):
            tokens = latents.name.split("_")
            key = "_".join(tokens[:-2] if "image_directory" in entry else tokens[:-3])
            text = folder / f"{key}_{ARCH}_te.safetensors"
            if not text.exists():
                print(f"WARNING Text encoder output cache file not found: {text}")
                continue
            read(latents)
            read(text)
            count += 1
    return count
