"""The weights lock: every Hub file a model family's presets need, pinned by commit, size and sha256.

`skeleton` derives the list of files from the shipped presets; `resolve` pins it against the Hub (on a machine
with internet, via `make lock-weights FAMILY=...`); builds and container starts verify every file against the
result and never download anything that is not in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from launcher.core.errors import UserError
from launcher.weights.fetch import TASKS, entry_name, entry_problem, sha256_file

LOCK_VERSION = 1
FAMILIES = ("wan21", "wan22")
# musubi loads these with transformers' AutoTokenizer.from_pretrained(repo, subfolder=...) at the default
# revision "main"; the image bakes them into the HF cache and runs with HF_HUB_OFFLINE=1.
T5_TOKENIZER = ("Wan-AI/Wan2.1-T2V-14B", "google/umt5-xxl")
CLIP_TOKENIZER = ("Wan-AI/Wan2.1-I2V-14B-720P", "xlm-roberta-large")


def _advice(family: str | None) -> str:
    return f"run make lock-weights FAMILY={family if family in FAMILIES else '<wan21|wan22>'}"


# --- the files the presets need ----------------------------------------------------------------------------

def _preset_refs(preset) -> list[tuple[str, bool]]:
    """Every "repo:path" one preset reads (the same roles make_plan adds), without planning, and whether it is
    read as a DiT (by musubi's loader or our merge, both of which read safetensors shards)."""
    model = preset.model
    refs = [(model.vae, False), (model.t5, False), (model.clip, False), (model.dit, True)]
    for expert in (preset.experts.high, preset.experts.low) if preset.experts else ():
        refs += [(expert.dit, True), (expert.lightning.lora if expert.lightning else None, False)]
    return [(ref, is_dit) for ref, is_dit in refs if ref]


def _family_presets(family: str) -> list:
    if family not in FAMILIES:
        raise UserError(f"unknown family {family!r}: use {' or '.join(FAMILIES)}")
    from launcher.core.presets import load_preset, preset_names

    presets = [load_preset(name).preset for name in preset_names()]
    return [p for p in presets if p.family == family]


def skeleton(family: str) -> list[dict]:
    """The family's files without pins: weights (repo, path) and tokenizer folders (repo, subfolder), with tasks."""
    weights: dict[str, set[str]] = {}
    dit_only: dict[str, bool] = {}
    t5_tasks: set[str] = set()
    clip_tasks: set[str] = set()
    for preset in _family_presets(family):
        task = preset.model.task.split("-", 1)[0]  # "t2v" or "i2v"
        for ref, is_dit in _preset_refs(preset):
            weights.setdefault(ref, set()).add(task)
            dit_only[ref] = dit_only.get(ref, True) and is_dit
        t5_tasks.add(task)
        if preset.model.clip:  # the schema allows CLIP only for Wan 2.1 I2V
            clip_tasks.add(task)
    # shardable: a file over an image's layer cap may be stored as safetensors shards (launcher/weights/layers.py).
    result = [{"kind": "weight", "repo": ref.split(":", 1)[0], "path": ref.split(":", 1)[1], "tasks": sorted(tasks),
               **({"shardable": True} if dit_only[ref] and ref.endswith(".safetensors") else {})}
              for ref, tasks in weights.items()]
    for (repo, subfolder), tasks in ((T5_TOKENIZER, t5_tasks), (CLIP_TOKENIZER, clip_tasks)):
        if tasks:
            result.append({"kind": "tokenizer", "repo": repo, "subfolder": subfolder, "tasks": sorted(tasks)})
    return sorted(result, key=lambda e: (e["kind"], e["repo"], e.get("path") or e["subfolder"]))


# --- pinning against the Hub -------------------------------------------------------------------------------

def _sha256_by_download(repo: str, path: str, revision: str, endpoint: str | None, token: str | None) -> str:
    """A small non-LFS file's sha256: the Hub only reports its git blob id, so hash the content."""
    from huggingface_hub import hf_hub_download

    with tempfile.TemporaryDirectory(prefix="lora-gym-lock-") as cache:
        return sha256_file(hf_hub_download(repo, path, revision=revision, cache_dir=cache, token=token,
                                           endpoint=endpoint))


def _pin(info, repo: str, revision: str, endpoint: str | None, token: str | None) -> dict:
    """Lock fields of one huggingface_hub RepoFile; LFS files carry their sha256."""
    if info.lfs is not None:
        return {"size": int(info.lfs.size), "sha256": info.lfs.sha256}
    return {"size": int(info.size), "sha256": _sha256_by_download(repo, info.path, revision, endpoint, token)}


def _weight_entries(api, repo: str, items: list[dict], revision: str, endpoint, token) -> list[dict]:
    infos = {i.path: i for i in api.get_paths_info(repo, [i["path"] for i in items], revision=revision)
             if hasattr(i, "size")}  # RepoFile; a RepoFolder has no size
    missing = [f"{repo}:{i['path']}" for i in items if i["path"] not in infos]
    if missing:
        raise UserError(f"not on the Hub at {repo}@{revision[:12]}: {', '.join(missing)}: fix the preset that "
                        "names it")
    return [{"repo": repo, "path": i["path"], "revision": revision, "kind": "weight", "tasks": i["tasks"],
             **({"shardable": True} if i.get("shardable") else {}),
             **_pin(infos[i["path"]], repo, revision, endpoint, token)} for i in items]


def _tokenizer_entries(api, item: dict, revision: str, endpoint, token) -> list[dict]:
    repo = item["repo"]
    files = [f for f in api.list_repo_tree(repo, path_in_repo=item["subfolder"], revision=revision, recursive=True)
             if hasattr(f, "size")]
    if not files:
        raise UserError(f"tokenizer folder {repo}:{item['subfolder']} is empty or missing at {revision[:12]}")
    return [{"repo": repo, "path": f.path, "revision": revision, "kind": "tokenizer", "tasks": item["tasks"],
             **_pin(f, repo, revision, endpoint, token)} for f in files]


def resolve(family: str, endpoint: str | None = None, token: str | None = None) -> dict:
    """The lock document for `family`: each repo pinned at its current "main" commit, each file sized and hashed."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    items = skeleton(family)
    # One commit per repo, resolved once, so a repo's weights and tokenizer files are always from the same commit.
    revisions = {repo: api.model_info(repo, revision="main").sha for repo in sorted({i["repo"] for i in items})}
    files: list[dict] = []
    for repo, revision in revisions.items():
        weights = [i for i in items if i["repo"] == repo and i["kind"] == "weight"]
        if weights:
            files += _weight_entries(api, repo, weights, revision, endpoint, token)
        for item in (i for i in items if i["repo"] == repo and i["kind"] == "tokenizer"):
            files += _tokenizer_entries(api, item, revision, endpoint, token)
    doc = {"family": family, "lock_version": LOCK_VERSION, "files": sort_entries(files)}
    validate(doc)
    return doc


def sort_entries(files: Iterable[dict]) -> list[dict]:
    """The lock's one order (weights are then indexed in it by the image's layers): kind, repo, path."""
    return sorted(files, key=lambda e: (e["kind"], e["repo"], e["path"]))


# --- the document ------------------------------------------------------------------------------------------

def validate(doc) -> dict:
    """The document, or a one-line UserError naming the first bad entry."""
    family = doc.get("family") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        raise UserError(f"weights lock has no files list: {_advice(family)}")
    if family not in FAMILIES or doc.get("lock_version") != LOCK_VERSION:
        raise UserError(f"weights lock is for family {family!r}, version {doc.get('lock_version')!r} (expected "
                        f"wan21/wan22, version {LOCK_VERSION}): {_advice(family)}")
    seen = set()
    for entry in doc["files"]:
        problem = entry_problem(entry)
        if problem is None and entry_name(entry) in seen:
            problem = "is listed twice"
        if problem:
            raise UserError(f"weights lock entry {entry_name(entry)} {problem}: {_advice(family)}")
        seen.add(entry_name(entry))
    return doc


def read(path: str | Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"weights lock {path} not found: {_advice(None)}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"weights lock {path} is not readable JSON ({exc}): {_advice(None)}") from None
    return validate(doc)


def canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest(doc: dict) -> str:
    """sha256 of the canonical JSON: the image label that says which lock an image was built from."""
    return hashlib.sha256(canonical(doc).encode()).hexdigest()


def write(path: str | Path, doc: dict, overwrite: bool = False) -> Path:
    """Write atomically (a reader never sees half a lock); an existing lock is replaced only when told."""
    path = Path(path)
    validate(doc)
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists: pass --force to replace it (review the diff before committing)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the image COPYs it, and a run with --user must read it
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def select(doc: dict, tasks: set[str]) -> list[dict]:
    """The entries at least one of `tasks` needs (e.g. {"t2v"} for `make image-wan22 TASKS=t2v`)."""
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise UserError(f"unknown tasks {sorted(unknown)}: use {', '.join(TASKS)}")
    return [e for e in doc["files"] if set(e["tasks"]) & set(tasks)]
