"""The sample steps at run time: after training, never at the LoRAs' expense.

The plan's sample steps (and a Lightning merge or DiT key copy only they need) run after every training step
succeeded. A failing one is recorded in run.json under `samples` and the rest are skipped, but the run still
succeeds: its LoRAs are done. musubi names each video `<time>_<seed>.mp4`; every prompt has its own seed, so each
video is renamed to `samples/e<epoch>/prompt-<n>.mp4` and listed with its sha256.

A sample step whose LoRA was not applied fails, and its videos go: musubi's generator only warns (utils/lora_utils.py
at the pinned commit, load_safetensors_with_lora_and_fp8: `logger.warning(f"Warning: not all LoRA keys are used:
{keys}")`) and renders the base model, exit code 0. So the step's output is watched for that warning, and a video
byte for byte equal to another epoch's (a LoRA that changed nothing) fails the step as well.

Wan 2.2 `both` trained in two containers (LORA_GYM_PAIR_DIR): each run plans the pair's samples, and the one that
finishes training last takes them (an exclusive create of a claim file decides a tie); the other records them as
deferred. LORA_GYM_STAGE=train always defers them to a later LORA_GYM_STAGE=samples (Modal's `both`).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from launcher.core.dataset import file_sha256
from launcher.core.errors import UserError
from lora_gym_entrypoint import resume
from lora_gym_entrypoint.manifest import now

UNUSED_KEYS = "not all LoRA keys are used"
PAIR_CLAIM = ".lora-gym-pair-samples.json"


def require_trained(plan) -> None:
    """LORA_GYM_STAGE=samples samples a run whose trainings are done: every LoRA it writes must be there, whole."""
    missing = [out for out in plan.outputs if not resume.file_whole(Path(out))]
    if missing:
        raise UserError(f"LORA_GYM_STAGE=samples needs the trained LoRA {missing[0]}, which is missing or not whole: "
                        "train the run first (same LORA_GYM_RUN_ID, preset, expert and overrides)")


def write_prompts(samples) -> None:
    if samples is not None and samples.steps:
        Path(samples.prompts_path).parent.mkdir(parents=True, exist_ok=True)
        Path(samples.prompts_path).write_text(samples.prompts_file, encoding="utf-8")


def new_record(samples) -> dict:
    """run.json's `samples` entry before any sample step ran."""
    return {"status": "pending" if samples.steps else "none", "note": samples.note, "epochs": list(samples.epochs),
            "prompts": [{"text": p.text, "seed": p.seed, "frames": p.frames, "image": p.image, "source": p.source}
                        for p in samples.prompts], "videos": [], "sheets": []}


def epoch_of(step_name: str) -> int | None:
    name = step_name.removeprefix("samples-e")
    return int(name) if name.isdigit() else None


def collect(samples, epoch: int, run_dir: Path) -> list[dict]:
    """Rename one epoch's videos to `prompt-<n>.mp4` and describe them; a prompt without its video is missing."""
    folder = Path(samples.folder) / f"e{epoch:06d}"
    videos = []
    for number, prompt in enumerate(samples.prompts, 1):
        found = sorted(folder.glob(f"*_{prompt.seed}.mp4"))
        target = folder / f"prompt-{number}.mp4"
        if found:
            found[-1].replace(target)
        if target.is_file():
            videos.append({"epoch": epoch, "prompt": number, "path": str(target.relative_to(run_dir)),
                           "size": target.stat().st_size, "sha256": file_sha256(target)})
    return videos


def missing(samples, videos: list[dict]) -> int:
    return len(samples.prompts) - len(videos)


def update_sheets(record: dict, run_dir: Path, log) -> None:
    """Redraw the contact sheets with every video so far; a sheet is a convenience and never fails the run."""
    try:
        from launcher.media.sheet import write_sheets

        record["sheets"] = write_sheets(run_dir, record)
    except ImportError as exc:
        log(f"samples: no contact sheet ({exc.name} is not installed)")
    except Exception as exc:  # noqa: BLE001 - a broken video must not cost the run its LoRAs
        log(f"samples: no contact sheet ({type(exc).__name__}: {exc})")


def with_dit_copies(samples, argv) -> tuple[str, ...]:
    """A sample step's argv loading each DiT's bare-key copy where its dit-keys step wrote one."""
    swap = {dit: copy for dit, copy in samples.dit_copies if Path(copy).is_file()}
    return tuple(swap.get(arg, arg) for arg in argv)


class LoraWatch:
    """A sample step's output, passed through, that keeps the LoRA keys musubi's generator says it did not use."""

    def __init__(self, out):
        self.out, self.unused = out, []

    def write(self, text: str) -> int:
        at = text.find(UNUSED_KEYS)
        if at >= 0:
            self.unused += [key.strip() for key in text[at + len(UNUSED_KEYS):].lstrip(": ").split(",") if key.strip()]
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


def not_applied(watch: LoraWatch, earlier: list[dict], videos: list[dict]) -> tuple[str, list[dict]] | None:
    """Why an epoch's videos are not the LoRA's, and every video that goes with them; None when they are."""
    if watch.unused:
        keys = ", ".join(watch.unused[:3]) + (", ..." if len(watch.unused) > 3 else "")
        return (f"the LoRA was not applied: musubi's generator matched {len(watch.unused)} LoRA keys to no weight of "
                f"the DiT it loaded (\"Warning: {UNUSED_KEYS}: {keys}\"), so the videos show another model than "
                "the LoRA's and were removed", videos)
    seen = {(v["prompt"], v["sha256"]): v for v in earlier}
    same = [seen[(v["prompt"], v["sha256"])] for v in videos if (v["prompt"], v["sha256"]) in seen]
    if not same:
        return None
    first = next(v for v in videos if (v["prompt"], v["sha256"]) in seen)
    return (f"the LoRA changed nothing: prompt {first['prompt']}'s video of epoch {first['epoch']} is byte for byte "
            f"the one of epoch {same[0]['epoch']}, so neither shows a trained LoRA; both were removed", videos + same)


def discard(record: dict, run_dir: Path, videos: list[dict]) -> None:
    """Removes videos from disk and from the record, and the contact sheets that showed them."""
    gone = {v["path"] for v in videos}
    for path in gone:
        (run_dir / path).unlink(missing_ok=True)
    for sheet in record.get("sheets", []):
        (run_dir / sheet["path"]).unlink(missing_ok=True)
    record["videos"] = [v for v in record["videos"] if v["path"] not in gone]
    record["sheets"] = []


def keep_epoch(record: dict, samples, epoch: int, watch: LoraWatch, log) -> str | None:
    """Lists an epoch's videos in the record if they show its LoRA; otherwise removes them (and whatever else the
    step left in its folder) and says why."""
    run_dir = Path(samples.folder).parent
    videos = collect(samples, epoch, run_dir)
    found = not_applied(watch, record["videos"], videos)
    if found is None:
        record["videos"] += videos
    else:
        discard(record, run_dir, found[1])
        shutil.rmtree(Path(samples.folder) / f"e{epoch:06d}", ignore_errors=True)
    update_sheets(record, run_dir, log)
    return found and found[0]


def _claim(path: Path, run_dir: str, other: str) -> str:
    """The run folder that samples the pair: ours if the exclusive create is ours (or was, before a restart)."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            return json.loads(path.read_text(encoding="utf-8"))["run_dir"]
        except (OSError, ValueError, KeyError, TypeError):
            return other  # being written this moment, so not by us
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"run_dir": run_dir, "at": now()}, handle)
    return run_dir


def pair_turn(samples, run_dir: str, stage: str) -> tuple[str, str] | None:
    """None when this run samples now; else (status, why): "deferred" to the other run or a later stage, or
    "failed" when LORA_GYM_STAGE=samples finds the other expert's LoRAs missing."""
    if samples.pair is None:
        return None
    if stage == "train":
        return "deferred", "LORA_GYM_STAGE=samples samples the pair once both experts are trained"
    missing = [Path(p).name for p in samples.pair_loras if not resume.file_whole(Path(p))]
    if missing and stage == "samples":
        return "failed", f"the other expert's LoRA {missing[0]} is not in {samples.pair} (or not whole): train it first"
    if missing:
        return "deferred", f"the run in {samples.pair} samples the pair when its training ends"
    holder = _claim(Path(min(run_dir, samples.pair)) / PAIR_CLAIM, run_dir, samples.pair)
    return None if holder == run_dir else ("deferred", f"the run in {holder} samples the pair")
