"""RUN for `launcher publish`: a run folder, its run.json, or a run id of the registry pulled into this folder.

One run can live in more than one folder: `--expert both` on Modal pulls as `<run id>/high` and `<run id>/low`
(launcher/backends/modal_backend.py, one container per expert), on RunPod as `<run id>-high` and `<run id>-low`
(runpod_pods.pod_run_id). Each folder has its own run.json; together they are the run's parts.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from launcher.core import runfiles
from launcher.core.errors import UserError
from launcher.core.inputs import SAFE_NAME, shown

EPOCH = re.compile(r"-(\d{6})\.safetensors$")
EXPERTS = ("high", "low")


@dataclass(frozen=True)
class Part:
    """One run folder and its run.json."""

    folder: Path
    record: dict

    @property
    def expert(self) -> str | None:
        return self.record.get("expert") or None

    @property
    def settings(self) -> dict:
        return self.record.get("settings") or {}


@dataclass(frozen=True)
class Run:
    run_id: str
    parts: tuple[Part, ...]

    @property
    def first(self) -> Part:
        return self.parts[0]

    @property
    def settings(self) -> dict:
        return self.first.settings

    @property
    def experts(self) -> list[str]:
        """The trained experts (Wan 2.2), high first; empty for Wan 2.1."""
        found = {e for p in self.parts for e in (EXPERTS if p.expert == "both" else [p.expert]) if e in EXPERTS}
        return [e for e in EXPERTS if e in found]


def _record(path: Path) -> dict:
    record = runfiles.read(path)  # a damaged run.json: one `error:` line naming the field
    if "settings" not in record:
        raise UserError(f"{path} is not a LoRA Gym run.json (no settings): give a run folder")
    return record


def _folders(path: Path) -> list[Path]:
    """The run folders at `path`: itself when it holds run.json, else its expert subfolders (Modal's layout)."""
    if (path / "run.json").is_file():
        return [path]
    return sorted(p.parent for p in path.glob("*/run.json") if p.parent.name in EXPERTS)


def _pulled(run_id: str, here: Path) -> list[Path]:
    if (here / run_id).is_dir():
        return _folders(here / run_id)
    return [here / f"{run_id}-{e}" for e in EXPERTS if (here / f"{run_id}-{e}" / "run.json").is_file()]


def _from_registry(name: str, here: Path) -> list[Path]:
    from launcher import runs

    record = runs.load(name)  # a UserError naming the registry when the id is unknown
    if record.get("kind") == "sweep":
        raise UserError(f"{name} is a sweep: publish one of its runs (`launcher status {name}` lists them)")
    folders = _pulled(name, here)
    if not folders:
        raise UserError(f"run {name} is not pulled into {here}: `launcher pull {name}` here first, or give its "
                        "run folder")
    return folders


def folders_of(run: str, here: Path | None = None) -> list[Path]:
    """The run folder(s) RUN names; a UserError when it names none."""
    here = here or Path.cwd()
    path = Path(run).expanduser()
    if path.is_file() and path.name == "run.json":
        return [path.parent]
    if path.is_dir():
        folders = _folders(path)
        if not folders:
            raise UserError(f"{path} holds no run.json: give a run folder (the one `launcher pull` wrote)")
        return folders
    if SAFE_NAME.fullmatch(run) and "/" not in run:
        return _from_registry(run, here)
    raise UserError(f"{shown(run)} is neither a run folder, a run.json nor a run id: see `launcher status` for ids")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output(part: Part, output: dict) -> Path:
    """A LoRA the run wrote, still what run.json says (size and sha256): a changed file is not this run's."""
    path = part.folder / output["path"]
    if not path.is_file():
        raise UserError(f"{path} is missing (run.json lists it): pull the run again (`launcher pull`)")
    if path.stat().st_size != output["size"] or _sha256(path) != output["sha256"]:
        raise UserError(f"{path} is not the file the run wrote (size or sha256 differs from run.json): pull the run "
                        "again")
    return path


def _same_run(parts: list[Part]) -> None:
    ids = {(p.record.get("preset") or {}).get("sha256") for p in parts}
    overrides = {tuple((p.record.get("preset") or {}).get("overrides", [])) for p in parts}
    if len(ids) > 1 or len(overrides) > 1:
        raise UserError(f"{', '.join(str(p.folder) for p in parts)} are not one run (their presets or overrides "
                        "differ): publish each folder on its own")


def load(run: str, here: Path | None = None) -> Run:
    parts = [Part(folder, _record(folder / "run.json")) for folder in folders_of(run, here)]
    for part in parts:
        if part.record.get("status") != "succeeded":
            raise UserError(f"{part.folder} did not succeed (status {part.record.get('status')!r}): only a "
                            "finished run is published")
    _same_run(parts)
    run_id = parts[0].record.get("run_id") or parts[0].folder.name
    if len(parts) > 1:  # Modal names each expert's run "high"/"low": the run is the folder above
        run_id = parts[0].folder.parent.name if parts[0].folder.name in EXPERTS else run_id.rsplit("-", 1)[0]
    return Run(run_id, tuple(parts))
