"""Cache entries that land whole, by content key, on a shared cache that offers no lock.

The folder locks of cachelock.py save duplicate work where O_CREAT|O_EXCL is atomic (a local disk, a POSIX
network volume). A Modal volume has no distributed locking: last write wins, and a container sees another's
writes only after that one commits and it reloads (https://modal.com/docs/reference/modal.Volume). SkyPilot's
bucket mounts are rclone object mounts with a 10 s directory cache (sky/data/mounting_utils.py,
get_mount_cached_cmd), where two machines' exclusive creates do not see each other. So correctness never rests
on the lock:

- Staging: each output folder of a cache step (its markers' folders) gets a twin in a staging folder of this
  attempt, `<cache>/staging/<run id>-<token>.<step>/`; the step's argv writes there, and musubi's
  `--dataset_config` becomes a copy whose `cache_directory` values are the twins. musubi v0.3.4 writes one file
  per item into cache_directory (`<item>_<W>x<H>_wan.safetensors`, `<item>_wan_te.safetensors`;
  src/musubi_tuner/dataset/image_video_dataset.py), merges a text-encoder output into an existing file of that
  name (dataset/cache_io.py, save_text_encoder_output_cache_common), and, without --keep_cache, deletes files
  of its kind that are not in the dataset (cache_latents.py encode_datasets; cache_text_encoder_outputs.py
  post_process_cache_files). A fresh twin has nothing to merge or delete, nor has a content-keyed folder (its
  key covers the dataset's content and every setting the names depend on), so the published folder holds what
  an in-place run leaves, and no step ever reads another run's half-written file.
- Publishing, only after the step succeeded: every file is fsynced, then renamed into the content-keyed folder
  (a reader opens the old whole file or the new whole one; two runs publishing one key write equivalent
  files); the markers come last, written the same way, and name the files they vouch for. `done()` believes a
  marker only when all of them are there: a store that uploads files in any order (rclone) may show the marker
  first, and musubi's training skips, with a mere warning, an item whose cache file is missing.
- The staging folder holds an owner file that its run renews like a lock. The next cache step of any run removes
  staging folders whose owner died on this machine or stopped renewing it for LORA_GYM_LOCK_TIMEOUT seconds
  (what a preempted machine leaves); a run whose folder was removed so does not publish.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from launcher.core.errors import UserError
from launcher.core.plan import Step
from lora_gym_entrypoint import cachelock
from lora_gym_entrypoint.manifest import now

STAGING = "staging"
OWNER = "owner.json"

Log = Callable[[str], None]


def done(markers: Sequence[str]) -> bool:
    """Every marker is there, and so is every file it names (an older marker names none)."""
    for marker in map(Path, markers):
        try:
            files = json.loads(marker.read_text()).get("files", [])
        except (OSError, ValueError, AttributeError):
            return False  # absent, or not a marker we wrote: the step runs again
        if not all((marker.parent / name).is_file() for name in files):
            return False
    return True


@dataclass
class Stage:
    """One attempt of a cache step: where it writes, and how its output goes public."""

    step: Step
    home: Path
    twins: Mapping[str, Path]  # output folder -> its twin in `home`
    argv: tuple[str, ...]
    claim: cachelock.Lock

    def publish(self) -> None:
        """Moves every staged file into its folder, then writes the markers; raises UserError if the staging
        folder was taken for abandoned and removed meanwhile (its files may be incomplete)."""
        if not self.claim.intact():
            raise UserError(f"{self.step.name}: another run removed its staging folder {self.home}, taking it for "
                            "abandoned: raise LORA_GYM_LOCK_TIMEOUT above the longest pause of a cache step")
        files = {folder: _publish(twin, Path(folder)) for folder, twin in self.twins.items()}
        for i, marker in enumerate(map(Path, self.step.markers)):
            partial = self.home / f"marker-{i}"
            partial.write_text(json.dumps({"at": now(), "files": files[str(marker.parent)]}) + "\n")
            marker.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, marker)


@contextlib.contextmanager
def staging(step: Step, cache_root: str, attempt: str, owner: dict, stale_after: float, log: Log) -> Iterator[Stage]:
    """A staging folder for `step`, removed afterwards whatever happens (publish first to keep its output)."""
    root = Path(cache_root) / STAGING
    sweep(root, stale_after, log)
    home = root / f"{attempt}.{step.name}"
    claim = cachelock.acquire(home / OWNER, owner, stale_after, log)  # a new name: nobody waits for it
    try:
        # The plan puts every output folder under the cache root: `datasets/<key>`, `lightning/<key>`.
        twins = {str(Path(m).parent): home / Path(m).parent.relative_to(cache_root) for m in step.markers}
        yield Stage(step, home, twins, _redirect(step.argv, twins, home / "dataset.toml"), claim)
    finally:
        claim.release()
        shutil.rmtree(home, ignore_errors=True)


def _redirect(argv: Sequence[str], twins: Mapping[str, Path], config: Path) -> tuple[str, ...]:
    """`argv` writing into the twins: a path inside an output folder moves (a merge's --output), and the
    dataset config is copied with its cache directories moved (musubi's cache scripts)."""
    moved = [next((str(twin) + arg[len(folder):] for folder, twin in twins.items()
                   if arg == folder or arg.startswith(folder + "/")), arg) for arg in argv]
    if "--dataset_config" in moved:
        at = moved.index("--dataset_config") + 1
        data = tomllib.loads(Path(moved[at]).read_text(encoding="utf-8"))
        for entry in data.get("datasets", []):
            if entry.get("cache_directory") in twins:
                entry["cache_directory"] = str(twins[entry["cache_directory"]])
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(tomli_w.dumps(data), encoding="utf-8")
        moved[at] = str(config)
    return tuple(moved)


def _publish(twin: Path, folder: Path) -> list[str]:
    """Renames every file of `twin` into `folder` (each one whole, on disk first); their names."""
    files = sorted(p for p in twin.rglob("*") if p.is_file())
    for path in files:
        _fsync(path, os.O_RDONLY)
    for path in files:
        target = folder / path.relative_to(twin)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    if files:
        _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)  # the renames themselves, before a marker vouches for them
    return [str(path.relative_to(twin)) for path in files]


def _fsync(path: Path, flags: int) -> None:
    # Not every filesystem can (some FUSE mounts refuse a directory fsync); the rename is atomic regardless.
    with contextlib.suppress(OSError):
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sweep(root: Path, stale_after: float, log: Log) -> None:
    """Removes the staging folders of runs that are gone: dead on this machine, or silent for `stale_after` s."""
    with contextlib.suppress(FileNotFoundError):
        for home in sorted(root.iterdir()):
            holder = cachelock.read_owner(home / OWNER)
            # Without an owner file (not yet, or no longer) the folder's age tells.
            if cachelock.is_stale(home / OWNER, holder, stale_after) if holder else _age(home) > stale_after:
                log(f"removing the staging folder {home}" + (f" of {cachelock.describe(holder)}" if holder else ""))
                shutil.rmtree(home, ignore_errors=True)


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
