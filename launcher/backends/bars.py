"""`--backend local` on a terminal: one progress bar per training instead of musubi's raw tqdm lines.

The container's log stream (bytes, `[step] line` per line, tqdm redraws already split into lines by the
entrypoint's runner) goes through `ProgressBars`: lines musubi's progress parser understands update the bar of
their step, every other line is printed above it. Standard library only.
"""

from __future__ import annotations

import codecs
import re

from launcher.core.progress import SAVED, Progress, duration

PREFIXED = re.compile(r"^\[([\w.-]+)\] (.*)$")
WIDTH = 24
CLEAR = "\r\x1b[K"


def bar_text(name: str, p: Progress) -> str:
    done = (p.step or 0) / p.steps if p.steps else 0.0
    filled = int(done * WIDTH)
    parts = [f"[{name}]", f"epoch {p.epoch}/{p.epochs}" if p.epochs else "",
             f"|{'█' * filled}{' ' * (WIDTH - filled)}|", f"{p.step or 0}/{p.steps or '?'} {done:4.0%}"]
    if p.it_per_s:
        parts.append(f"{p.it_per_s:.2f} it/s" if p.it_per_s >= 1 else f"{1 / p.it_per_s:.2f} s/it")
    if p.loss_avg is not None:
        parts.append(f"loss {p.loss_avg:.4g}")
    if p.eta_s is not None:
        parts.append(f"ETA {duration(p.eta_s)}")
    return " ".join(part for part in parts if part)


class ProgressBars:
    """A binary stream for the container's logs that draws training progress as bars on a text terminal."""

    def __init__(self, out):
        self.out, self.pending = out, ""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.bars: dict[str, Progress] = {}
        self.shown: str | None = None  # the step whose bar is on the last line now

    def write(self, chunk: bytes) -> int:
        self.pending += self.decoder.decode(chunk)
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        return len(chunk)

    def _line(self, line: str) -> None:
        match = PREFIXED.match(line)
        name = match[1] if match else None
        progress = self.bars.setdefault(name, Progress()) if name and name.startswith("train") else None
        if progress is not None and progress.feed(match[2]) and not SAVED.match(match[2].strip()):
            if self.shown not in (None, name):
                self.out.write("\n")  # the previous training's bar stays, finished, above the new one
            self.shown = name
            self.out.write(CLEAR + bar_text(name, self.bars[name]))
            return
        # An ordinary line goes above the bar, which is redrawn under it.
        self.out.write(CLEAR + line + "\n")
        if self.shown is not None:
            self.out.write(bar_text(self.shown, self.bars[self.shown]))

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""
        if self.shown is not None:
            self.out.write("\n")
        self.out.flush()


def log_output(stdout):
    """Where the container's log bytes go: bars on a terminal, the raw stream otherwise (pipes, files, CI)."""
    return ProgressBars(stdout) if stdout.isatty() else stdout.buffer
