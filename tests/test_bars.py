"""`--backend local` on a terminal: musubi's tqdm lines become one bar per training (launcher/backends/bars.py)."""

from __future__ import annotations

import io
import re

from conftest import ROOT

from launcher.backends.bars import ProgressBars, log_output

RECORDED = (ROOT / "tests" / "fixtures" / "musubi_train_output.txt").read_text(encoding="utf-8")


def container_log(step: str) -> bytes:
    """The recorded musubi output as the entrypoint's runner streams it: `[step] line`, tqdm redraws split."""
    return "".join(f"[{step}] {line}\n" for line in re.split(r"[\r\n]", RECORDED) if line).encode()


def test_each_training_gets_one_bar_and_other_lines_pass_through():
    out = io.StringIO()
    bars = ProgressBars(out)
    log = b"[lora-gym] run r: 4 steps\n" + container_log("train-high") + container_log("train-low")
    for start in range(0, len(log), 7):  # chunks that split lines and UTF-8 characters (the bar's blocks)
        bars.write(log[start:start + 7])
    bars.close()
    text = out.getvalue()
    assert "steps:" not in text and "it/s, avr_loss" not in text  # no raw tqdm line reaches the terminal
    shown = [line.rsplit("\r\x1b[K", 1)[-1] for line in text.split("\n")]  # what stays on each terminal line
    assert shown[0] == "[lora-gym] run r: 4 steps"
    assert "[train-high] saving checkpoint: /output/run/lora-000002.safetensors" in shown  # kept, above the bar
    finished = [line for line in shown if "|" in line]
    assert [line.split("]")[0] for line in finished] == ["[train-high", "[train-low"]
    last_loss = RECORDED[RECORDED.rindex("avr_loss=") + 9:].split("]")[0]
    for line in finished:
        assert "epoch 4/4" in line and "20/20 100%" in line and f"loss {float(last_loss):.4g}" in line


def test_bars_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    class Pipe(io.TextIOWrapper):
        def isatty(self):
            return False

    assert isinstance(log_output(Terminal()), ProgressBars)
    pipe = Pipe(io.BytesIO())
    assert log_output(pipe) is pipe.buffer
