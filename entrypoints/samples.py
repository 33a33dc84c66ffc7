"""The sample steps at run time: after training, never at the LoRAs' expense.

The plan's sample steps (and a Lightning merge only they need) run after every training step succeeded. A failing
one is recorded in run.json under `samples` and the rest are skipped, but the run still succeeds: its LoRAs are
done. musubi names each video `<time>_<seed>.mp4`; every prompt has its own seed, so each video is renamed to
`samples/e<epoch>/prompt-<n>.mp4` and listed with its sha256.
"""

from __future__ import annotations

from pathlib import Path

from launcher.core.dataset import file_sha256


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
