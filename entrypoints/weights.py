"""Slim images: download the plan's missing weight files at start, only those the weights lock pins.

A full image has every file baked, so nothing here downloads. A slim image starts with an empty weights volume;
the first run fetches the locked files into it (resuming partial downloads, verifying sha256), a second run
finds them present and downloads nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
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
