"""Continuing an interrupted training step from musubi-tuner's saved state (v0.3.4 with accelerate 1.6.0).

What `--resume <state>` does at that commit (`accelerator.load_state`, read in trainer_base.py and accelerate's
checkpointing.py): it restores the LoRA weights, the optimizer state (its param_groups' `lr` included) and the
LR scheduler's `state_dict`. For the LambdaLR that transformers' schedule functions return, that state is
`base_lrs`, `last_epoch` (scheduler steps taken so far) and `_last_lr`, but not the lambda: a functools.partial
keeps its arguments (`num_training_steps`, `lr_end`, `power`, `lr_init`) out of its `__dict__`, so they come from
the new command line. musubi's own step and epoch counters restart at 0 and it trains `--max_train_epochs`
epochs again, and it sizes the schedule from that same number of steps.

So a plain `--resume` with the planned argv trains every epoch again on a schedule that is past its end; and
giving the remaining epochs instead shrinks the schedule's length while the restored `last_epoch` keeps the
elapsed steps (a polynomial jumps to its floor, a cosine climbs back up). A fresh tail schedule (a new peak
lr over the remaining steps) would need `last_epoch` back at 0, which `--resume` does not allow. What does work:

- `--max_train_epochs E - e0`: the loop trains exactly the epochs that are left;
- `--lr_scheduler_type transformers.optimization.<function>` with `num_training_steps=T` (the first attempt's
  total) in `--lr_scheduler_args`: musubi builds the original lambda, independent of the shorter loop, and the
  restored `last_epoch` continues it, so every remaining step gets the learning rate it would have had;
- `--output_dir <run>/resume-e<e0>`: musubi numbers epochs from 1 again, so its checkpoints would overwrite the
  first attempt's; `finalize` renames them to the epochs an uninterrupted run would have written.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from launcher.core.checks import resume_problems
from launcher.core.plan import KEEP_STATES

# musubi prints this once it knows the total (trainer_base.py); the entrypoint records it in run.json.
TOTAL_STEPS = re.compile(r"override steps\. steps for (\d+) epochs is .*: (\d+)\s*$")
SEGMENT = re.compile(r"^resume-e(\d{6})$")
# What accelerate 1.6.0 writes for musubi (the network's weights only, via musubi's save hook), in this order;
# random_states_0.pkl comes last. scaler.pt joins them with fp16 mixed precision and is checked when present.
# With N data-parallel processes each writes its own random_states_<rank>.pkl.
REQUIRED_STATE_FILES = ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl")
# musubi's --lr_scheduler name -> the transformers function its get_lr_scheduler calls for it. Only these
# depend on the total step count; constant schedules continue from the restored last_epoch as they are.
SCHEDULE_FUNCTIONS = {
    "linear": "get_linear_schedule_with_warmup",
    "cosine": "get_cosine_schedule_with_warmup",
    "cosine_with_restarts": "get_cosine_with_hard_restarts_schedule_with_warmup",
    "polynomial": "get_polynomial_decay_schedule_with_warmup",
}


@dataclass(frozen=True)
class SavedState:
    path: Path
    epoch: int  # epochs finished when it was saved, counted from the start of the run


@dataclass(frozen=True)
class Start:
    """How a train step starts: its argv, the state it resumes from (if any), and the line to log."""

    argv: tuple[str, ...]
    state: SavedState | None
    note: str


# --- whole files --------------------------------------------------------------------------------------

def _safetensors_whole(path: Path) -> bool:
    # 8-byte header length, JSON header, then the data its offsets point into: a cut file is shorter.
    try:
        with path.open("rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        return path.stat().st_size == 8 + size + max(ends, default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False


def _zip_whole(path: Path) -> bool:
    # torch.save writes a zip whose central directory comes last: a cut file has none.
    try:
        with zipfile.ZipFile(path) as archive:
            return bool(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def file_whole(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return _safetensors_whole(path)
    return _zip_whole(path) if path.suffix in (".bin", ".pt", ".pkl") else path.is_file()


def state_complete(folder: Path, processes: int = 1) -> bool:
    """Every file accelerate writes is there and whole (a save cut short by a kill leaves one missing or cut)."""
    required = REQUIRED_STATE_FILES + tuple(f"random_states_{rank}.pkl" for rank in range(1, processes))
    if not folder.is_dir() or not all((folder / name).is_file() for name in required):
        return False
    return all(file_whole(p) for p in folder.iterdir() if p.is_file())


# --- where a step's files are -------------------------------------------------------------------------

def segment_dir(output_dir: str | Path, epoch: int) -> Path:
    return Path(output_dir) / f"resume-e{epoch:06d}"


def segments(output_dir: str | Path) -> list[tuple[Path, int]]:
    """(folder, epochs done before it) for the output folder and each resume folder in it, oldest first."""
    root = Path(output_dir)
    found = [(root, 0)]
    if root.is_dir():
        found += [(p, int(m[1])) for p in root.iterdir() if p.is_dir() and (m := SEGMENT.match(p.name))]
    return sorted(found, key=lambda item: item[1])


def _absolute_name(file_name: str, name: str, offset: int, epochs: int) -> tuple[str, int] | None:
    """(name an uninterrupted run gives it, its epoch) for one of musubi's outputs named `name`, else None."""
    if file_name == f"{name}.safetensors":
        return file_name, epochs
    if file_name == f"{name}-state":  # musubi's state at the end of training
        return file_name, epochs
    match = re.fullmatch(rf"{re.escape(name)}-(\d{{6}})(-state|\.safetensors)", file_name)
    if match is None:
        return None
    epoch = offset + int(match[1])
    return f"{name}-{epoch:06d}{match[2]}", epoch


def saved_states(output_dir: str | Path, name: str, epochs: int, processes: int = 1) -> list[SavedState]:
    """Every complete state of the step named `name`, oldest first (later resume folders win ties)."""
    found = []
    for folder, offset in segments(output_dir):
        for child in folder.iterdir():
            named = _absolute_name(child.name, name, offset, epochs)
            if named and child.is_dir() and state_complete(child, processes):
                found.append((named[1], offset, SavedState(child, named[1])))
    return [state for *_, state in sorted(found, key=lambda item: item[:2])]


def final_lora(output_dir: str | Path, name: str) -> Path | None:
    """The step's whole final LoRA (musubi writes it last), in the output folder or a resume folder."""
    for folder, _ in reversed(segments(output_dir)):
        if file_whole(path := folder / f"{name}.safetensors"):
            return path
    return None


# --- the resumed command line -------------------------------------------------------------------------

def _value(argv: Sequence[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _values(argv: Sequence[str], flag: str) -> list[str]:
    if flag not in argv:
        return []
    rest = argv[argv.index(flag) + 1:]
    return list(rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))])


def _set(argv: Sequence[str], flag: str, values: Sequence[str], after: str | None = None) -> list[str]:
    """argv with `flag`'s values replaced (the flag added after `after`'s values, or at the end, if absent)."""
    argv = list(argv)
    if flag in argv:
        start = argv.index(flag) + 1
        return argv[:start] + list(values) + argv[start + len(_values(argv, flag)):]
    at = argv.index(after) + 1 + len(_values(argv, after)) if after in argv else len(argv)
    return argv[:at] + [flag, *values] + argv[at:]


def _schedule_args(argv: Sequence[str], total_steps: int) -> list[str]:
    """The planned schedule, with its length pinned to the first attempt's total (see the module docstring)."""
    name = _value(argv, "--lr_scheduler") or "constant"
    if name not in SCHEDULE_FUNCTIONS:
        return list(argv)
    # musubi: num_training_steps = max_train_steps * num_processes; float warmups are fractions of it.
    total = total_steps * int(_value(argv, "--num_processes") or 1)
    warmup = _value(argv, "--lr_warmup_steps") or "0"
    kwargs = dict(arg.split("=", 1) for arg in _values(argv, "--lr_scheduler_args"))
    if name == "polynomial":
        kwargs["power"] = _value(argv, "--lr_scheduler_power") or "1.0"
    if name == "cosine_with_restarts":
        kwargs["num_cycles"] = _value(argv, "--lr_scheduler_num_cycles") or "1"
    kwargs["num_warmup_steps"] = str(int(float(warmup) * total) if "." in warmup else int(warmup))
    kwargs["num_training_steps"] = str(total)
    argv = _set(argv, "--lr_scheduler_type", [f"transformers.optimization.{SCHEDULE_FUNCTIONS[name]}"],
                after="--lr_scheduler")
    return _set(argv, "--lr_scheduler_args", [f"{k}={v}" for k, v in kwargs.items()], after="--lr_scheduler_type")


def resumed_argv(argv: Sequence[str], state: SavedState, total_steps: int) -> tuple[str, ...]:
    """The planned train argv, continued from `state` of a run whose first attempt had `total_steps` steps."""
    epochs = int(_value(argv, "--max_train_epochs"))
    if not 0 < state.epoch <= epochs:
        raise ValueError(f"state {state.path} is from epoch {state.epoch}, outside 1..{epochs}")
    resumed = _set(argv, "--max_train_epochs", [str(epochs - state.epoch)])
    resumed = _set(resumed, "--output_dir", [str(segment_dir(_value(argv, "--output_dir"), state.epoch))])
    resumed = tuple(_set(_schedule_args(resumed, total_steps), "--resume", [str(state.path)]))
    problems = resume_problems(resumed)
    if problems:
        raise ValueError("resumed argv breaks the musubi-tuner contract: " + "; ".join(problems))
    return resumed


def plan_start(argv: Sequence[str], total_steps: int | None, attempted: bool) -> Start:
    """How to start a train step: fresh, again from scratch, or from its newest complete saved state."""
    name, out = _value(argv, "--output_name"), _value(argv, "--output_dir")
    if not attempted:
        return Start(tuple(argv), None, "starting")
    processes = int(_value(argv, "--num_processes") or 1)
    state = next(reversed(saved_states(out, name, int(_value(argv, "--max_train_epochs")), processes)), None)
    if state is None:
        why = "it saved no complete state" if "--save_state" in argv else "train.save_state is off"
        return Start(tuple(argv), None, f"restarting from scratch: {why}")
    if not total_steps:
        return Start(tuple(argv), None, "restarting from scratch: the first attempt's step count was not recorded")
    return Start(resumed_argv(argv, state, total_steps), state, f"resuming after epoch {state.epoch} from {state.path}")


# --- tidying up after a resumed step ------------------------------------------------------------------

def _move(source: Path, target: Path) -> None:
    if target.is_dir():
        shutil.rmtree(target)
    source.replace(target)


def finalize(output_dir: str | Path, name: str, epochs: int, keep: int = KEEP_STATES) -> None:
    """Give a resumed step's files the names an uninterrupted run leaves, and keep its newest `keep` states
    (musubi's --save_last_n_epochs_state counts within one attempt's folder only).

    Resume folders are folded in oldest first, so epochs a later attempt trained again replace the earlier copies.
    """
    root = Path(output_dir)
    for folder, offset in segments(root)[1:]:
        for child in sorted(folder.iterdir()):
            named = _absolute_name(child.name, name, offset, epochs)
            if named:
                _move(child, root / named[0])
        with suppress(OSError):
            folder.rmdir()  # another expert's files may still be in it
    states = [p for p in root.glob(f"{name}-*-state") if _absolute_name(p.name, name, 0, epochs)]
    whole = sorted((p for p in states if state_complete(p)), key=lambda p: p.name)
    for stale in [p for p in states if p not in whole] + whole[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
