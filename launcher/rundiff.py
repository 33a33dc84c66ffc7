"""`launcher diff RUN_A RUN_B`: what differs between two runs, from what each recorded (launcher/rerun.read).

The image (as pinned, and the musubi-tuner commit and weights lock its labels name), the preset's resolved values
as dotted keys (the ones `--set` takes), the overrides, the dataset's files (added, removed, changed), the locked
weight files, and each training's final loss (from progress.json; a run known only to the registry has none here
until it is pulled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from launcher.core.provenance import compare_files, dotted

MUSUBI_LABEL = "ai.loragym.musubi-commit"  # launcher.backends.labels.MUSUBI_COMMIT (not imported: the SDK-free path)
LOCK_LABEL = "ai.loragym.weights-lock"


@dataclass(frozen=True)
class Side:
    run_id: str
    where: str
    doc: dict
    folder: Path | None


def load(ref: str) -> Side:
    from launcher import rerun

    doc, where, folder, _ = rerun.read(ref)
    return Side(str(doc.get("run_id") or ref), where, doc, folder)


def _image(doc: dict) -> dict:
    image, labels = doc.get("image") or {}, doc.get("image_labels") or {}
    return {"ref": image.get("ref"), "digest": image.get("digest"), "source": image.get("source"),
            "musubi_commit": labels.get(MUSUBI_LABEL) or doc.get("musubi_commit"),
            "weights_lock": labels.get(LOCK_LABEL)}


def _weights(doc: dict) -> dict[str, str | None]:
    return {f"{w.get('repo')}:{w.get('path')}": w.get("sha256") for w in doc.get("weights") or []}


def final_losses(side: Side) -> dict[str, float | None]:
    """Each training's last loss (musubi's moving average), from the run folder's progress.json."""
    if side.folder is None:
        return {}
    try:
        trainings = json.loads((side.folder / "progress.json").read_text(encoding="utf-8")).get("trainings") or {}
    except (OSError, ValueError, AttributeError):
        return {}
    losses = {}
    for name, training in sorted(trainings.items()):
        history = training.get("history") or []
        losses[name] = training.get("loss_avg") if training.get("loss_avg") is not None else (
            history[-1][1] if history else None)
    return losses


def _changed(a: dict, b: dict) -> dict[str, list]:
    return {key: [a.get(key), b.get(key)] for key in sorted(a.keys() | b.keys()) if a.get(key) != b.get(key)}


def compare(a: Side, b: Side) -> dict:
    """Every difference, as data (`--format json` prints it; `as_text` reads it)."""
    da, db = a.doc, b.doc
    overrides_a, overrides_b = ((d.get("preset") or {}).get("overrides") or [] for d in (da, db))
    files_a, files_b = ((d.get("dataset") or {}).get("files") for d in (da, db))
    digests = [(d.get("dataset") or {}).get("sha256") for d in (da, db)]
    dataset: dict = {"sha256": digests, "same": None if None in digests else digests[0] == digests[1]}
    if isinstance(files_a, list) and isinstance(files_b, list):
        changes = compare_files(files_a, files_b)
        dataset |= {"same": not changes, "added": list(changes.added), "removed": list(changes.removed),
                    "changed": list(changes.changed)}
    losses = [final_losses(side) for side in (a, b)]
    return {"a": {"run_id": a.run_id, "from": a.where}, "b": {"run_id": b.run_id, "from": b.where},
            "image": _changed(_image(da), _image(db)),
            "preset": _changed({"name": (da.get("preset") or {}).get("name")},
                               {"name": (db.get("preset") or {}).get("name")}),
            "values": _changed(dotted(da.get("settings") or {}), dotted(db.get("settings") or {})),
            "overrides": {"only_a": [o for o in overrides_a if o not in overrides_b],
                          "only_b": [o for o in overrides_b if o not in overrides_a]},
            "dataset": dataset, "weights": _changed(_weights(da), _weights(db)),
            "final_loss": {name: [losses[0].get(name), losses[1].get(name)]
                           for name in sorted(losses[0].keys() | losses[1].keys())}}


def _value(value) -> str:
    return "(none)" if value is None else json.dumps(value) if not isinstance(value, str) else value


def _pairs(title: str, changed: dict[str, list]) -> list[str]:
    if not changed:
        return [f"{title}: same"]
    return [f"{title}:"] + [f"  {key}: {_value(a)} -> {_value(b)}" for key, (a, b) in changed.items()]


def _dataset_lines(dataset: dict) -> list[str]:
    if dataset["same"]:
        return [f"dataset: same ({dataset['sha256'][0]})"]
    if dataset["same"] is None:
        return ["dataset: not comparable (a run recorded no dataset digest)"]
    lines = [f"dataset: {dataset['sha256'][0]} -> {dataset['sha256'][1]}"]
    for kind in ("changed", "added", "removed"):
        lines += [f"  {kind}: {path}" for path in dataset.get(kind, [])]
    return lines


def as_text(diff: dict) -> str:
    a, b = diff["a"], diff["b"]
    lines = [f"A: {a['run_id']} ({a['from']})", f"B: {b['run_id']} ({b['from']})"]
    lines += _pairs("image", diff["image"]) + _pairs("preset", diff["preset"]) + _pairs("values", diff["values"])
    only_a, only_b = diff["overrides"]["only_a"], diff["overrides"]["only_b"]
    lines += ["overrides: same"] if not (only_a or only_b) else (
        ["overrides:"] + [f"  - {o} (A only)" for o in only_a] + [f"  + {o} (B only)" for o in only_b])
    lines += _dataset_lines(diff["dataset"]) + _pairs("weights", diff["weights"])
    losses = diff["final_loss"]
    lines += ["final loss: none recorded (pull the runs for their progress.json)"] if not losses else (
        ["final loss:"] + [f"  {name}: {_value(la)} -> {_value(lb)}" for name, (la, lb) in losses.items()])
    return "\n".join(lines)
