"""`launcher run --from RUN`: start a recorded run again, exactly; and the record that makes that possible.

RUN is a run id from the registry, a run folder, or its run.json. Both keep the same facts (launcher/core/provenance):
the preset as written and its overrides, the expert, the image as pinned, and every dataset file's sha256. From
them the run is planned again: the preset's recorded text (the registry's file when it is still the same, else a
copy kept in the state folder), the same overrides (then any `--set` on top), the pinned image, the recorded
dataset folder. A dataset whose files changed since is refused with the list of changes, unless `--dataset` is
given again: then it trains on the folder as it is now.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from launcher.core.errors import UserError
from launcher.core.inputs import shown
from launcher.core.provenance import compare_files, dataset_files, dataset_record, image_record

MAX_LISTED = 20  # changed dataset files listed before the rest are counted


@dataclass(frozen=True)
class Recorded:
    """What one earlier run was started with, read from run.json or the run registry."""

    run_id: str
    preset: dict  # origin, name, sha256 (of the resolved values), overrides, content (the file as written)
    expert: str | None
    dataset: dict  # sha256 and files; path: the folder on this machine (the registry knows it)
    image: dict | None  # launcher.core.provenance.image_record
    backend: str | None  # known from the registry only


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what} {path} cannot be read ({type(exc).__name__}): give a run id, a run folder or "
                        "its run.json") from None
    if not isinstance(data, dict):
        raise UserError(f"{what} {path} is not a run record: give a run id, a run folder or its run.json")
    return data


def _registry_record(run_id: str) -> dict | None:
    from launcher import runs

    try:
        return runs.load(run_id)
    except (UserError, OSError, ValueError):
        return None


def _is_list_of(value, kind, keys=()) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, kind) and all(isinstance(item.get(k), str) for k in keys) for item in value)


# key -> (what it must be, the check): each key `--from` and `launcher diff` read, when it is there at all
SHAPE = {"preset": ("an object", lambda v: isinstance(v, dict) and _is_list_of(v.get("overrides", []), str)),
         "expert": ("text", lambda v: isinstance(v, str)),
         "dataset": ("an object", lambda v: isinstance(v, dict) and (
             "files" not in v or _is_list_of(v["files"], dict, ("path", "sha256")))),
         "image": ("an object", lambda v: isinstance(v, dict)),
         "image_labels": ("an object", lambda v: isinstance(v, dict)),
         "settings": ("an object", lambda v: isinstance(v, dict)),
         "weights": ("a list", lambda v: _is_list_of(v, dict))}


def _check_shape(doc: dict, where: str) -> dict:
    wrong = [f"{key} is not {what}" for key, (what, ok) in SHAPE.items() if doc.get(key) is not None
             and not ok(doc[key])]
    if wrong:
        raise UserError(f"{where} is not a run record LoRA Gym wrote ({'; '.join(wrong)}): give another run")
    return doc


def _from_document(doc: dict, where: str, record: dict | None) -> Recorded:
    """A Recorded from run.json's keys (the registry's `reproduce` entry holds the same ones)."""
    preset = doc.get("preset")
    if not isinstance(preset, dict) or not isinstance(preset.get("content"), str):
        raise UserError(f"{where} does not hold the preset's text (it predates `launcher run --from`): start it "
                        "again with `launcher run --preset ... --dataset ...`")
    registry = (record or {}).get("reproduce") or {}
    dataset = dict(doc.get("dataset") or {})
    dataset.setdefault("path", (registry.get("dataset") or {}).get("path"))
    return Recorded(run_id=str(doc.get("run_id") or (record or {}).get("run_id") or where), preset=preset,
                    expert=doc.get("expert"), dataset=dataset, image=doc.get("image"),
                    backend=(record or {}).get("backend"))


def read(ref: str) -> tuple[dict, str, Path | None, dict | None]:
    """RUN's recorded facts with run.json's keys (a run folder's run.json, or a registry record's `reproduce`
    entry), what was read (for messages), the run folder (None for a registry id) and its registry record."""
    path = Path(ref).expanduser()
    if path.is_dir():
        path = path / "run.json"
        if not path.is_file():
            raise UserError(f"{ref} has no run.json: give a run folder (`launcher pull RUN DIR` brings one), "
                            "its run.json, or a run id from `launcher status`")
    if path.is_file():
        doc = _check_shape(_read_json(path, "run record"), str(path))
        return doc, str(path), path.parent, _registry_record(str(doc.get("run_id", "")))
    from launcher import runs

    record = runs.load(ref)  # an unknown id: one line with the closest ids
    if not isinstance(record.get("reproduce"), dict):
        raise UserError(f"run {ref} was recorded before LoRA Gym kept what reproduces it: pull it "
                        f"(`launcher pull {ref} DIR`) and give its folder instead")
    return _check_shape({"run_id": ref, **record["reproduce"]}, f"run {ref}"), f"run {ref}", None, record


def locate(ref: str) -> Recorded:
    """The run RUN names: a run folder, a run.json, or a registry id."""
    doc, where, _, record = read(ref)
    return _from_document(doc, where, record)


def preset_ref(recorded: Recorded) -> str:
    """The preset to load: the origin when its text is still the recorded one, else the recorded text, kept in
    the state folder under its content's hash (never a file of the user's)."""
    from launcher.core.presets import read_source
    from launcher.core.state import home

    content, origin = recorded.preset["content"], str(recorded.preset.get("origin") or "")
    try:
        if origin and read_source(origin)[1] == content:
            return origin
    except UserError:
        pass  # gone or renamed: the recorded text below
    name = str(recorded.preset.get("name") or "preset")
    kept = home() / "presets" / hashlib.sha256(content.encode()).hexdigest()[:16] / f"{Path(name).name}.toml"
    if not kept.is_file():
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(content, encoding="utf-8")
    print(f"note: preset {origin or name} is not what run {recorded.run_id} used any more; using its recorded text "
          f"({kept})", file=sys.stderr)
    return str(kept)


def dataset_dir(recorded: Recorded, given: str | None) -> str:
    if given:
        return given
    path = recorded.dataset.get("path")
    if not path:
        raise UserError(f"run {recorded.run_id}'s record does not say where its dataset is on this machine: add "
                        "--dataset DIR (its files are checked against the recorded ones)")
    return str(path)


def image_for(recorded: Recorded, given: str | None, backend: str | None) -> str | None:
    """--image when given, else the recorded image as pinned; a note when it cannot be pinned."""
    if given or not recorded.image:
        if not given:
            print(f"note: run {recorded.run_id} did not record its image: using the default one", file=sys.stderr)
        return given
    ref, digest, source = recorded.image.get("ref"), recorded.image.get("digest"), recorded.image.get("source")
    if source == "engine" and backend in (None, "local"):
        return digest  # the local engine's image id: exactly that image, whatever its tag names now
    if source == "unresolved" or source == "engine":
        print(f"note: run {recorded.run_id}'s image is known here by its tag only ({ref}), which may name another "
              "image by now: pass --image NAME@sha256:... to pin it", file=sys.stderr)
    return ref


def check_dataset(recorded: Recorded, job, given: str | None) -> None:
    """Refuse a dataset whose files differ from the recorded ones, unless --dataset was given again."""
    before = recorded.dataset.get("files")
    if not isinstance(before, list):
        if not given:
            raise UserError(f"run {recorded.run_id}'s record has no per-file dataset digests: pass --dataset DIR "
                            "to train on that folder as it is now")
        return
    changes = compare_files(before, dataset_files(job.layout))
    if not changes:
        return
    where = shown(str(recorded.dataset.get("path") or given))
    if given:
        print(f"note: the dataset differs from run {recorded.run_id}'s ({changes.summary()}); training on it as it "
              "is now (--dataset)", file=sys.stderr)
        return
    lines = changes.lines()
    extra = [f"... and {len(lines) - MAX_LISTED} more"] if len(lines) > MAX_LISTED else []
    raise UserError(f"the dataset {where} changed since run {recorded.run_id} ({changes.summary()}): restore it, "
                    f"or pass --dataset {where} to train on it as it is now", *lines[:MAX_LISTED], *extra)


def check_preset(recorded: Recorded, job, extra_overrides) -> None:
    """The reloaded preset must resolve to the recorded values; a launcher whose defaults changed says so."""
    if not extra_overrides and job.loaded.content_hash != recorded.preset.get("sha256"):
        print(f"warning: this launcher resolves run {recorded.run_id}'s preset to other values than it ran with "
              f"(another version?): `launcher diff {recorded.run_id} ...` after the run shows which", file=sys.stderr)


# --- the record written at launch -------------------------------------------------------------------------

def reproduce_entry(job, dataset: str, image_ref: str) -> dict:
    """The registry's `reproduce` entry: run.json's keys, plus the dataset folder on this machine."""
    from launcher import contract

    loaded = job.loaded
    origin = str(Path(loaded.origin).resolve()) if Path(loaded.origin).is_file() else loaded.origin
    return {"preset": {"origin": origin, "name": loaded.preset.name, "sha256": loaded.content_hash,
                       "overrides": list(loaded.overrides), "content": loaded.text},
            "expert": job.plan.expert, "settings": loaded.preset.model_dump(mode="json"),
            "dataset": {"path": str(Path(dataset).resolve()), **dataset_record(job.layout)},
            "image": image_record(image_ref),
            # the commit this launcher's plan is checked against; run.json has the image's own label
            "musubi_commit": contract.musubi_commit()}


def remember(job, options) -> None:
    """Add the `reproduce` entry to the run's registry record, when the backend made one (detached runs)."""
    from launcher import runs
    from launcher.backends import labels

    run_id = options.run_id or job.plan.run_id
    try:
        record = runs.load(run_id)
    except (UserError, OSError, ValueError):
        return  # the backend recorded nothing (it refused, or keeps no record): nothing to add to
    ref = options.image or labels.default_image(job.loaded.preset.family)
    runs.save(record | {"reproduce": reproduce_entry(job, options.dataset, ref)})


# --- `launcher run --from`, as run_cmd calls it ------------------------------------------------------------

@dataclass(frozen=True)
class Inputs:
    preset: str
    expert: str | None
    dataset: str
    overrides: tuple[str, ...]  # the recorded ones, then --set
    image: str | None
    backend: str | None


def inputs(ref: str, *, preset, expert, dataset, overrides, image, backend) -> tuple[Recorded, Inputs]:
    """The run's inputs as recorded, with the flags given on top; bad combinations refused first."""
    if preset or expert:
        flag = "--preset" if preset else "--expert"
        raise UserError(f"--from takes the preset and expert from the run it starts again: drop {flag} "
                        "(change values with --set)")
    recorded = locate(ref)
    backend = backend or recorded.backend
    return recorded, Inputs(preset_ref(recorded), recorded.expert, dataset_dir(recorded, dataset),
                            (*recorded.preset.get("overrides", ()), *overrides), image_for(recorded, image, backend),
                            backend)


def check(recorded: Recorded, job, given_dataset: str | None, extra_overrides) -> None:
    """After planning: the dataset and preset are the recorded ones (or the user said otherwise)."""
    check_dataset(recorded, job, given_dataset)
    check_preset(recorded, job, extra_overrides)
    print(f"note: starting run {recorded.run_id} again as {job.plan.run_id}: its preset, "
          f"{len(recorded.preset.get('overrides', ()))} override(s), expert and dataset"
          + (f", plus {len(extra_overrides)} --set" if extra_overrides else ""), file=sys.stderr)
