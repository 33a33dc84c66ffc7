"""Every file one publish puts in the repo, built locally (no network, no token): the run's LoRAs, its sample
videos, the loss curve, the ComfyUI workflows, a settings record and the model card that ties them together.

Everything generated is a pure function of the run folder(s), so publishing the same run twice gives the same
bytes, and the upload can compare them with the repo's files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from launcher.core import runfiles
from launcher.core.errors import UserError
from launcher.publish import card, comfyui, comfyui_ui, loras, models
from launcher.publish.source import Run

WORKFLOW_API, WORKFLOW_UI = "comfyui/workflow-api.json", "comfyui/workflow.json"
SETTINGS, LOSS_CSV, LOSS_PNG, README = "lora-gym.json", "loss.csv", "loss.png", "README.md"


@dataclass(frozen=True)
class Entry:
    repo_path: str
    source: Path | bytes
    size: int
    sha256: str

    @classmethod
    def of_bytes(cls, repo_path: str, data: bytes) -> Entry:
        return cls(repo_path, data, len(data), hashlib.sha256(data).hexdigest())

    @classmethod
    def of_file(cls, repo_path: str, path: Path) -> Entry:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return cls(repo_path, path, path.stat().st_size, digest.hexdigest())

    def read(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.read_bytes()


@dataclass(frozen=True)
class Bundle:
    entries: list[Entry]
    front_matter: str


def _json(data) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n").encode()


def _why_none(record: dict | None) -> str | None:
    """Why a run folder shows no sample video; None when another folder holds them (a deferred pair)."""
    if not record or record.get("status") == "none":
        return "samples were off for this run"
    if record.get("status") == "deferred":  # Wan 2.2 in two containers: the other folder sampled the pair
        return None
    reason = record.get("reason") or f"the sample step {record.get('failed_step') or ''} did not succeed"
    return f"no video is shown: {reason} (status {record.get('status')})"


def _samples(run: Run) -> tuple[list[card.Sample], list[Entry], str]:
    """The sample videos of every folder whose samples succeeded; a failed sample step shows nothing, since its
    videos may not show the LoRA at all (the entrypoint removes them then, too)."""
    done = [(p, p.record["samples"]) for p in run.parts if (p.record.get("samples") or {}).get("status") == "succeeded"]
    samples, entries = [], []
    for part, record in done:
        label = part.expert if len(done) > 1 else ""  # folders that each sampled alone (older Modal/RunPod runs)
        prompts = {n: p["text"] for n, p in enumerate(record.get("prompts", []), 1)}
        for video in record.get("videos", []):
            path = part.folder / video["path"]
            if not path.is_file():
                raise UserError(f"{path} is missing (run.json lists it): pull the run again")
            repo_path = video["path"].replace("samples/", f"samples/{label}/", 1) if label else video["path"]
            entries.append(Entry.of_file(repo_path, path))
            samples.append(card.Sample(repo_path, video["epoch"], prompts.get(video["prompt"], ""), label))
    notes = [r.get("note") or "" for _, r in done] or [_why_none(p.record.get("samples")) for p in run.parts]
    return samples, entries, "; ".join(n for n in dict.fromkeys(notes) if n) or "none recorded"


def _loss(run: Run) -> tuple[list[Entry], str | None]:
    trainings = {}
    for part in run.parts:
        trainings |= (runfiles.read_if_there(part.folder / "progress.json") or {}).get("trainings", {})
    rows = [f"{name},{step},{loss}" for name, t in sorted(trainings.items()) for step, loss in t.get("history", [])]
    if not rows:
        return [], None
    entries = [Entry.of_bytes(LOSS_CSV, ("training,step,loss\n" + "\n".join(rows) + "\n").encode())]
    if importlib.util.find_spec("matplotlib") is None:  # the report extra; without it the card links the CSV
        return entries, LOSS_CSV
    from launcher import report

    return [*entries, Entry.of_bytes(LOSS_PNG, report.loss_plot(trainings))], LOSS_PNG


def _prompt(run: Run, trigger: str | None) -> comfyui.Prompt:
    s = run.settings.get("samples") or {}
    recorded = [p for part in run.parts for p in ((part.record.get("samples") or {}).get("prompts") or [])]
    if recorded:
        p = recorded[0]
        return comfyui.Prompt(p["text"], p["seed"], p["frames"], Path(p["image"]).name if p.get("image") else None)
    return comfyui.Prompt(trigger or "a video", s.get("seed", 42), s.get("frames", 33), None)


def _downloads(run: Run, files: list[loras.LoraFile], url: str, endpoint: str) -> dict[str, dict]:
    """File name in ComfyUI -> where to get it and which models/ folder it goes in."""
    m, experts = run.settings["model"], run.settings.get("experts") or {}
    refs = [(e["dit"], "diffusion_models") for e in experts.values()] or [(m["dit"], "diffusion_models")]
    refs += [(m["vae"], "vae"), (models.TEXT_ENCODER, "text_encoders")]
    refs += [(models.CLIP_VISION, "clip_vision")] if m.get("clip") else []
    found = {models.file_name(ref): {"url": models.url(endpoint, ref), "directory": folder} for ref, folder in refs}
    for e in experts.values():  # keep the Lightning repo's folder: its high and low files share one name
        if e.get("lightning"):
            found[models.hub_file(e["lightning"]["lora"])[1]] = {"url": models.url(endpoint, e["lightning"]["lora"]),
                                                                 "directory": "loras"}
    for f in files:
        if f.epoch is None:
            found[f.repo_path] = {"url": f"{url}/resolve/main/{f.repo_path}", "directory": "loras"}
    return found


def _spec(run: Run, files: list[loras.LoraFile], trigger: str | None) -> comfyui.Spec:
    s, experts = run.settings, run.settings.get("experts") or {}
    dits = {e: models.file_name(x["dit"]) for e, x in experts.items()} or {"": models.file_name(s["model"]["dit"])}
    lightning = {e: (models.hub_file(x["lightning"]["lora"])[1], x["lightning"]["strength"])
                 for e, x in experts.items() if x.get("lightning")}
    ours = {f.expert or "": f.repo_path for f in files if f.epoch is None}
    return comfyui.Spec(s["family"], s["model"]["task"], dits, models.file_name(s["model"]["vae"]), ours, lightning,
                        models.sampling(s), _prompt(run, trigger))


def _lora_checked(run: Run) -> bool:
    checks = [c for p in run.parts for c in (p.record.get("lora_check") or {}).values()]
    return bool(checks) and all(c.get("status") == "passed" for c in checks)


def _settings_record(run: Run) -> dict:
    r = run.first.record
    return {"run_id": run.run_id, "lora_gym_version": r.get("lora_gym_version"), "preset": r.get("preset"),
            "experts": run.experts, "settings": run.settings, "dataset": r.get("dataset"),
            "training": {k: v for p in run.parts for k, v in (p.record.get("training") or {}).items()},
            "sample_prompts": [p for part in run.parts for p in ((part.record.get("samples") or {}).get("prompts")
                                                                 or [])]}


def build(run: Run, repo_id: str, endpoint: str, trigger: str | None, checkpoints: bool) -> Bundle:
    url = f"{endpoint}/{repo_id}"
    files = loras.lora_files(run, checkpoints)
    samples, sample_entries, note = _samples(run)
    loss_entries, loss = _loss(run)
    downloads = _downloads(run, files, url, endpoint)
    api = comfyui.api_workflow(_spec(run, files, trigger))
    entries = [Entry(f.repo_path, f.path, f.size, f.sha256) for f in files] + sample_entries + loss_entries
    entries += [Entry.of_bytes(WORKFLOW_API, _json(api)),
                Entry.of_bytes(WORKFLOW_UI, _json(comfyui_ui.ui_workflow(api, downloads, f"{repo_id}:{run.run_id}"))),
                Entry.of_bytes(SETTINGS, _json(_settings_record(run)))]
    comfy_files = [(name, d["directory"], d["url"]) for name, d in downloads.items()]
    text = card.render(card.CardInput(
        repo_id=repo_id, url=url, title=repo_id.split("/")[-1], settings=run.settings, record=run.first.record,
        experts=run.experts, loras=files, samples=samples, samples_note=note, loss=loss,
        files=comfy_files, trigger=trigger, lora_checked=_lora_checked(run)))
    front = text.split("---\n", 2)[1]
    return Bundle([Entry.of_bytes(README, text.encode()), *entries], front)
