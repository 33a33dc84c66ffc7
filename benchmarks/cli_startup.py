"""Compare the startup time of `launcher --help` with `modal --help`.

Both commands run as subprocesses from the same virtualenv as this interpreter,
interleaved (launcher, modal, launcher, ...) so that machine noise hits both alike.
Exits 1 if median(launcher) / median(modal) exceeds --max-ratio.

    .venv/bin/python benchmarks/cli_startup.py [--runs 15] [--max-ratio 0.25]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
WARMUPS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per command (default: %(default)s)")
    parser.add_argument(
        "--max-ratio",
        type=float,
        default=0.25,
        help="fail if median launcher / median modal is above this (default: %(default)s)",
    )
    parser.add_argument(
        "--launcher-cmd",
        default=None,
        help="command to time instead of `<venv>/bin/launcher --help` (shell-quoted string)",
    )
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def launcher_command(override: str | None) -> tuple[str, list[str]]:
    """(label, argv) for the launcher side."""
    if override:
        return override, shlex.split(override)
    return "launcher --help", [str(BIN / "launcher"), "--help"]


def modal_command() -> tuple[str, list[str]] | None:
    exe = BIN / "modal"
    return ("modal --help", [str(exe), "--help"]) if exe.exists() else None


def time_once(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def measure(commands: list[list[str]], runs: int) -> list[list[float]]:
    """Run every command WARMUPS times untimed, then `runs` times timed, interleaved."""
    for _ in range(WARMUPS):
        for cmd in commands:
            time_once(cmd)
    samples: list[list[float]] = [[] for _ in commands]
    for _ in range(runs):
        for cmd, times in zip(commands, samples, strict=True):
            times.append(time_once(cmd))
    return samples


def report(labels: list[str], samples: list[list[float]]) -> None:
    width = max(len("command"), *(len(label) for label in labels))
    print(f"{'command':<{width}}  {'median s':>9}  {'min s':>7}")
    for label, times in zip(labels, samples, strict=True):
        print(f"{label:<{width}}  {statistics.median(times):>9.3f}  {min(times):>7.3f}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modal = modal_command()
    if modal is None:
        print(f"error: no `modal` executable in {BIN}; run `pip install modal` first", file=sys.stderr)
        return 2
    labels, commands = zip(launcher_command(args.launcher_cmd), modal, strict=True)
    try:
        samples = measure(list(commands), args.runs)
    except subprocess.CalledProcessError as exc:
        print(f"error: `{shlex.join(exc.cmd)}` exited with status {exc.returncode}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(list(labels), samples)
    launcher_s, modal_s = (statistics.median(times) for times in samples)
    ratio = launcher_s / modal_s
    verdict = "ok" if ratio <= args.max_ratio else "FAIL"
    print(f"ratio launcher/modal: {ratio:.3f} (max {args.max_ratio}) {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
