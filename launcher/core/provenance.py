"""What makes a run reproducible, as data: the dataset's content (each file's sha256 and one digest over them all),
the image as pinned, and the helpers that compare two runs. Pure functions.

run.json (written by the entrypoint) and the run registry (written by the launcher) hold these same shapes;
`launcher run --from` and `launcher diff` read them back.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from launcher.core.dataset import CAPTION_EXTENSION, DatasetLayout

# A reference pinned to a registry manifest: `name[:tag]@sha256:<64 hex>` (Docker's reference grammar).
PINNED_REF = re.compile(r"@(sha256:[0-9a-f]{64})$")
IMAGE_ID = re.compile(r"sha256:[0-9a-f]{64}")


def dataset_files(layout: DatasetLayout) -> list[dict]:
    """Every media file and caption the plan reads, relative to the dataset folder, with its sha256; sorted."""
    files = []
    for media_dir in layout.dirs:
        for name, (media_sha, caption_sha) in zip(media_dir.files, media_dir.sha256s, strict=True):
            media = PurePosixPath(media_dir.relpath or ".") / name
            files += [{"path": str(media), "sha256": media_sha},
                      {"path": str(media.with_suffix(CAPTION_EXTENSION)), "sha256": caption_sha}]
    return sorted(files, key=lambda f: f["path"])


def files_digest(files: list[dict]) -> str:
    """One sha256 over the (path, sha256) list: equal exactly when every file's path and content are."""
    digest = hashlib.sha256()
    for entry in sorted(files, key=lambda f: f["path"]):
        digest.update(f"{entry['path']}\0{entry['sha256']}\n".encode())
    return digest.hexdigest()


def dataset_record(layout: DatasetLayout) -> dict:
    """run.json's and the registry's `dataset.sha256` and `dataset.files`."""
    files = dataset_files(layout)
    return {"sha256": files_digest(files), "files": files}


@dataclass(frozen=True)
class FileChanges:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def lines(self) -> list[str]:
        return ([f"changed: {p}" for p in self.changed] + [f"added: {p}" for p in self.added]
                + [f"removed: {p}" for p in self.removed])

    def summary(self) -> str:
        counts = [(len(self.changed), "changed"), (len(self.added), "added"), (len(self.removed), "removed")]
        return ", ".join(f"{n} {what}" for n, what in counts if n) or "no change"


def compare_files(before: list[dict], after: list[dict]) -> FileChanges:
    old, new = ({f["path"]: f["sha256"] for f in files} for files in (before, after))
    return FileChanges(added=tuple(sorted(new.keys() - old.keys())), removed=tuple(sorted(old.keys() - new.keys())),
                       changed=tuple(sorted(p for p in old.keys() & new.keys() if old[p] != new[p])))


def image_record(ref: str | None, image_id: str | None = None) -> dict | None:
    """The image a run used, pinned as far as anyone could tell: by the local engine's image id (`engine`), by the
    digest the reference itself carries (`reference`), or not at all (`unresolved`: a tag, which may move).
    None when nobody said which image this is (a container started by hand)."""
    if not ref and not image_id:
        return None
    if image_id and re.fullmatch(r"[0-9a-f]{64}", image_id):  # an engine may give the id without its algorithm
        image_id = f"sha256:{image_id}"
    if image_id and IMAGE_ID.fullmatch(image_id):
        return {"ref": ref, "digest": image_id, "source": "engine"}
    pinned = PINNED_REF.search(ref or "")
    if pinned:
        return {"ref": ref, "digest": pinned[1], "source": "reference"}
    return {"ref": ref, "digest": None, "source": "unresolved"}


def dotted(value, prefix: str = "") -> dict[str, object]:
    """A nested mapping as `a.b.c -> value`, the keys a user types in `--set`; lists stay values."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, object] = {}
    for key, item in value.items():
        flat |= dotted(item, f"{prefix}.{key}" if prefix else str(key))
    return flat
