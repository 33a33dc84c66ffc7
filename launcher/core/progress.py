"""musubi-tuner's training output, parsed into progress: epoch, step, speed, loss, ETA.

The formats are musubi's own (training/trainer_base.py at 30c658c4): `epoch {n}/{total}` lines, the tqdm bar
`steps:  40%|####      | 12/30 [00:24<00:36,  2.01s/it, avr_loss=0.0876]` (tqdm(desc="steps"), set_postfix with
LossRecorder.moving_average: the mean loss over the last epoch's worth of steps) and `saving checkpoint: PATH`.
tests/fixtures holds recorded output. Standard library only: the entrypoint and the launcher's local progress
bars both use it.
"""

from __future__ import annotations

import re

EPOCH = re.compile(r"^epoch (\d+)/(\d+)$")
BAR = re.compile(r"^steps:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) \[([\d:]+)<([\d:]+|\?),\s*"
                 r"(?:([\d.]+)(it/s|s/it)|\?it/s)(?:, avr_loss=([-+\w.]+))?")
SAVED = re.compile(r"^saving checkpoint: (\S.*)$")
MAX_HISTORY = 400  # loss points kept per training; older ones are thinned to every other one


def clock_seconds(text: str) -> int | None:
    """tqdm's `[H:]MM:SS` as seconds; None for `?`."""
    if not re.fullmatch(r"\d+(:\d+){1,2}", text):
        return None
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return seconds


def _rate(value: str | None, unit: str | None) -> float | None:
    if not value or float(value) == 0:
        return None
    return float(value) if unit == "it/s" else 1 / float(value)


def _loss(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


class Progress:
    """Progress of one training step (one musubi process), fed one output line at a time."""

    def __init__(self):
        self.epoch = self.epochs = self.step = self.steps = None
        self.it_per_s = self.loss_avg = self.eta_s = self.elapsed_s = self.checkpoint = None
        self.history: list[list[float]] = []  # [step, loss moving average]

    def feed(self, line: str) -> bool:
        """Take one line; True when it changed the progress."""
        line = line.strip()
        if match := EPOCH.match(line):
            self.epoch, self.epochs = int(match[1]), int(match[2])
        elif match := BAR.match(line):
            self._bar(match)
        elif match := SAVED.match(line):
            self.checkpoint = match[1].rsplit("/", 1)[-1]
        else:
            return False
        return True

    def _bar(self, match: re.Match) -> None:
        self.step, self.steps = int(match[1]), int(match[2])
        self.elapsed_s, self.eta_s = clock_seconds(match[3]), clock_seconds(match[4])
        self.it_per_s = _rate(match[5], match[6])
        loss = _loss(match[7])
        if loss is not None:
            self.loss_avg = loss
            self._record(self.step, loss)

    def _record(self, step: int, loss: float) -> None:
        if self.history and self.history[-1][0] == step:
            self.history[-1][1] = loss  # set_postfix after update: the same step again, newer loss
            return
        self.history.append([step, loss])
        if len(self.history) > MAX_HISTORY:
            self.history = self.history[::2]

    def as_dict(self) -> dict:
        return {"epoch": self.epoch, "epochs": self.epochs, "step": self.step, "steps": self.steps,
                "it_per_s": self.it_per_s, "loss_avg": self.loss_avg, "eta_s": self.eta_s,
                "elapsed_s": self.elapsed_s, "checkpoint": self.checkpoint}


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def describe(entry: dict) -> str:
    """One line for `launcher status`: `train-high: epoch 3/10, step 11/30 (37%), 1.9 s/it, loss 0.0876, ETA ...`."""
    parts = []
    if entry.get("epochs"):
        parts.append(f"epoch {entry['epoch']}/{entry['epochs']}")
    if entry.get("steps"):
        parts.append(f"step {entry['step']}/{entry['steps']} ({100 * entry['step'] // entry['steps']}%)")
    rate = entry.get("it_per_s")
    if rate:
        parts.append(f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it")
    if entry.get("loss_avg") is not None:
        parts.append(f"loss {entry['loss_avg']:.4g}")
    if entry.get("eta_s") is not None:
        parts.append(f"ETA {duration(entry['eta_s'])}")
    return f"{entry.get('stage', '?')}: " + (", ".join(parts) or entry.get("status", "running"))


def status_line(data: dict, now_iso: str | None = None) -> str:
    """A progress.json as one `launcher status` row: the step running (or how the run ended) and its progress."""
    from datetime import datetime

    line = describe({"stage": data.get("stage"), "status": data.get("status"), **(data.get("current") or {})})
    if data.get("status") not in (None, "running"):
        line += f" [run {data['status']}]"
    if now_iso and data.get("updated_at"):
        age = datetime.fromisoformat(now_iso) - datetime.fromisoformat(data["updated_at"])
        line += f" (updated {duration(max(0.0, age.total_seconds()))} ago)"
    return line
