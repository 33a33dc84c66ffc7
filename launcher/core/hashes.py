"""sha256 of many files, remembered between runs by (path, size, modification time), with a progress line
when hashing takes more than a second.

Every `launcher run --dry-run` names its caches after the dataset's content, so it hashes every media file;
a dataset of a few GB would make each dry run wait. The cache lives in the launcher's state folder
(LORA_GYM_HOME); a file whose size or modification time changed is hashed again. The cache is only a
speed-up: if it cannot be read or written, everything is hashed as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

CACHE_NAME = "file-hashes.json"
MAX_ENTRIES = 200_000  # beyond this the oldest half is dropped: the cache must not grow without bound
PROGRESS_AFTER_S = 1.0


def _key(path: Path) -> tuple[str, list[int]]:
    stat = path.stat()
    return str(path.resolve()), [stat.st_size, stat.st_mtime_ns]


def _load(cache: Path) -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return data
    return {}


def _save(cache: Path, entries: dict) -> None:
    if len(entries) > MAX_ENTRIES:
        entries = dict(list(entries.items())[len(entries) // 2:])
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.partial")
        tmp.write_text(json.dumps(entries), encoding="utf-8")
        os.replace(tmp, cache)


class _Progress:
    """`hashing N/M files (X of Y GB)` on stderr, only on a terminal and only once a second has passed."""

    def __init__(self, total_files: int, total_bytes: int):
        self.total_files, self.total_bytes = total_files, total_bytes
        self.start, self.shown = time.monotonic(), False
        self.tty = sys.stderr.isatty()

    def update(self, files: int, done_bytes: int) -> None:
        if not self.tty or time.monotonic() - self.start < PROGRESS_AFTER_S:
            return
        self.shown = True
        sys.stderr.write(f"\rhashing the dataset: {files}/{self.total_files} files "
                         f"({done_bytes / 1e9:.2f} of {self.total_bytes / 1e9:.2f} GB)")
        sys.stderr.flush()

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def sha256_files(paths: Sequence[Path]) -> dict[Path, str]:
    """path -> sha256 hex of each file; unchanged files since an earlier call are not read again."""
    from launcher.core.state import home  # the launcher's state folder, beside the run registry
    from launcher.weights.fetch import sha256_file  # the one implementation, standard library only

    cache = home() / CACHE_NAME
    entries, changed = _load(cache), False
    keys = {path: _key(path) for path in paths}
    progress = _Progress(len(paths), sum(stamp[0] for _, stamp in keys.values()))
    result, done_bytes = {}, 0
    for n, path in enumerate(paths, 1):
        name, stamp = keys[path]
        known = entries.get(name)
        if isinstance(known, list) and len(known) == 3 and known[:2] == stamp:
            result[path] = known[2]
        else:
            result[path] = sha256_file(path)
            entries[name], changed = [*stamp, result[path]], True
        done_bytes += stamp[0]
        progress.update(n, done_bytes)
    progress.close()
    if changed:
        _save(cache, entries)
    return result
