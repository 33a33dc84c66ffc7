"""Weight files at start: where an image stores them, joining split ones, downloading a slim image's.

A full image has every file baked, so nothing here downloads; files over its layer cap are stored in pieces
(launcher/weights/layers.py): a DiT as shards, which musubi reads through the first one, any other file as byte
parts, joined once into the cache volume and verified by sha256. A slim image starts with an empty weights
volume; the first run fetches the locked files into it (resuming partial downloads, verifying sha256), a second
run finds them present and downloads nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

from launcher.core.errors import UserError
from launcher.weights import fetch, lockfile


class WeightsReport(NamedTuple):
    downloaded: int
    present: int
    bytes: int  # downloaded


def _root(weight) -> str:
    """The weights folder of one file: container_path is <root>/<repo>/<path>."""
    suffix = f"/{weight.repo}/{weight.path}"
    if not str(weight.container_path).endswith(suffix):
        raise UserError(f"weight file {weight.container_path} is not at <weights dir>{suffix}: it cannot be fetched")
    return str(weight.container_path)[: -len(suffix)]


def _is_present(weight, entry: dict | None) -> bool:
    path = Path(weight.container_path)
    size = entry["size"] if entry else weight.size
    return path.is_file() and (size is None or path.stat().st_size == size)


def _locked_weights(lock_path: str) -> dict[str, dict]:
    doc = lockfile.read(lock_path)
    return {fetch.entry_name(e): e for e in doc["files"] if e["kind"] == "weight"}


def ensure_weights(weights: Iterable, lock_path: str | None, hf_home: str, log: Callable[[str], None]
                   ) -> WeightsReport:
    """Fetch each weight file that is missing (or has the wrong size) and is pinned by the lock.

    A missing file the lock does not pin stops the run before any download: nothing unpinned is ever fetched.
    """
    weights = list({w.container_path: w for w in weights}.values())  # one file may serve two roles
    lock = _locked_weights(lock_path) if lock_path else {}
    todo = [w for w in weights if not _is_present(w, lock.get(f"{w.repo}:{w.path}"))]
    if todo and not lock_path:
        raise UserError(f"weight files missing and no weights lock to fetch them by: "
                        f"{', '.join(f'{w.repo}:{w.path}' for w in todo)}: set LORA_GYM_WEIGHTS_LOCK or use a full "
                        "image")
    unpinned = [f"{w.repo}:{w.path}" for w in todo if f"{w.repo}:{w.path}" not in lock]
    if unpinned:
        raise UserError(f"weight files not in the weights lock {lock_path}: {', '.join(unpinned)}: nothing unpinned "
                        "is downloaded; add them with make lock-weights or mount them at LORA_GYM_WEIGHTS_DIR")
    token, endpoint, size = fetch.read_token(), fetch.read_endpoint(), 0
    for number, weight in enumerate(todo, 1):
        entry = lock[f"{weight.repo}:{weight.path}"]
        log(f"weights [{number}/{len(todo)}] {fetch.entry_name(entry)} ({fetch.gb(entry['size'])}): downloading")
        started = time.monotonic()
        try:
            fetch.fetch_entry(entry, _root(weight), hf_home, endpoint=endpoint, token=token)
        except fetch.FetchError as exc:
            raise UserError(f"{exc}: check the network and run again (partial downloads resume)") from None
        size += entry["size"]
        log(f"weights [{number}/{len(todo)}] {fetch.entry_name(entry)}: verified in {time.monotonic() - started:.0f} s")
    report = WeightsReport(len(todo), len(weights) - len(todo), size)
    if todo:
        log(f"weights: downloaded {report.downloaded} files, {fetch.gb(size)}; already present {report.present}")
    return report


# --- files an image stores in pieces ---------------------------------------------------------------------

def read_layout(path: str) -> dict:
    """The image's layout document ("repo:path" -> storage and pieces); empty when the image has none."""
    if not path or not Path(path).is_file():
        return {}
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("files", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise UserError(f"the image's weights layout {path} is unreadable ({exc}): rebuild the image") from None


def joined_root(cache_dir: str) -> str:
    # Where a slim image downloads whole files too, so either kind of image finds a file the other made.
    return f"{cache_dir}/weights"


def locations(layout: Mapping[str, dict], weights_dir: str, cache_dir: str) -> dict[str, str]:
    """"repo:path" -> the path the plan gives musubi: the first shard, or the joined file in the cache volume."""
    found = {}
    for ref, stored in layout.items():
        repo_path = ref.replace(":", "/", 1)
        if stored["storage"] == "shards":
            found[ref] = f"{weights_dir}/{stored['pieces'][0]}"
        elif stored["storage"] == "parts":
            found[ref] = f"{joined_root(cache_dir)}/{repo_path}"
    return found


def _join(entry: dict, parts: list[Path], final: Path, log: Callable[[str], None]) -> None:
    partial = final.with_name(final.name + ".partial")
    digest = hashlib.sha256()
    with open(partial, "wb") as out:
        for number, part in enumerate(parts, 1):
            with open(part, "rb") as src:
                while chunk := src.read(8 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            log(f"weights: joining {fetch.entry_name(entry)}: part {number}/{len(parts)}")
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != entry["sha256"]:
        partial.unlink(missing_ok=True)
        raise UserError(f"the parts of {fetch.entry_name(entry)} in this image do not add up to its locked sha256: "
                        "rebuild the image")
    os.replace(partial, final)


def join_parts(weights: Iterable, layout: Mapping[str, dict], weights_dir: str, cache_dir: str,
               log: Callable[[str], None]) -> int:
    """Join each plan file the image stores as parts into the cache volume, once; returns how many were joined."""
    root, joined = Path(joined_root(cache_dir)), 0
    for weight in {w.container_path: w for w in weights}.values():
        ref = f"{weight.repo}:{weight.path}"
        stored = layout.get(ref)
        if not stored or stored["storage"] != "parts":
            continue
        entry = {"repo": weight.repo, "path": weight.path, "size": stored["size"], "sha256": stored["sha256"]}
        final = Path(weight.container_path)  # root/<repo>/<path>, as locations() gave the plan
        if fetch.is_verified(final, entry, root):  # a stamp spares re-hashing 11 GB at every start
            continue
        final.parent.mkdir(parents=True, exist_ok=True)
        with fetch.exclusive(root, entry):  # two containers on one cache volume join it once
            if not fetch.is_verified(final, entry, root):
                log(f"weights: joining {ref} ({fetch.gb(stored['size'])}) into the cache volume, once")
                _join(entry, [Path(weights_dir) / p for p in stored["pieces"]], final, log)
                fetch.stamp(final, entry, root)  # _join hashed it while writing
                joined += 1
    return joined
