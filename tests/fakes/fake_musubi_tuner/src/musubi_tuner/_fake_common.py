"""Shared behaviour of the fake musubi-tuner scripts (a test double).

Parsers are built from the real musubi-tuner contract data, split like the real ones: a common
`setup_parser_common()` and a per-script `wan_setup_parser(parser)`.
"""

import argparse
import ast
import json
import math
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path

from launcher import contract

TYPES = {"int": int, "float": float, "str": str, "Path": Path, "int_or_float": float}


def empty_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser()


def add_options(parser: argparse.ArgumentParser, script: str) -> argparse.ArgumentParser:
    for raw in contract.load()["scripts"][script]["options"]:
        if raw["action"] == "help":
            continue
        if raw["action"] == "store_true":
            parser.add_argument(*raw["option_strings"], dest=raw["dest"], action="store_true")
            continue
        nargs = raw["nargs"] if raw["nargs"] in ("*", "+", "?") else None
        parser.add_argument(*raw["option_strings"], dest=raw["dest"], type=TYPES.get(raw["type"], str),
                            choices=raw["choices"], nargs=nargs, required=raw["required"])
    return parser


def value(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


def start(script: str) -> list[str]:
    args = sys.argv[1:]
    problems = contract.check_args(script, args)
    if problems:
        print("fake musubi: " + "; ".join(problems), file=sys.stderr)
        sys.exit(2)
    log = os.environ.get("FAKE_MUSUBI_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"script": script, "argv": args}) + "\n")
    if os.environ.get("FAKE_MUSUBI_FAIL") == script:
        print(f"fake musubi: {script} failing on purpose", file=sys.stderr)
        sys.exit(3)
    if os.environ.get("FAKE_MUSUBI_OOM") == script:
        # torch 2.8's own words (c10/cuda/CUDACachingAllocator.cpp), as the real training prints them on stderr.
        print("Traceback (most recent call last):\n  File \"wan_train_network.py\", line 1, in <module>\n"
              "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
              "of 23.55 GiB of which 1.23 GiB is free. Including non-PyTorch memory, this process has 22.31 GiB "
              "memory in use. Of the allocated memory 20.11 GiB is allocated by PyTorch, and 1.65 GiB is reserved "
              "by PyTorch but unallocated.", file=sys.stderr)
        sys.exit(1)
    if os.environ.get("FAKE_MUSUBI_HANG") == script:
        def on_term(signum, frame):
            print(f"fake musubi: {script} got signal {signum}", flush=True)
            sys.exit(0)  # a step that exits 0 after SIGTERM must still stop the run
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(60)
    if os.environ.get("FAKE_MUSUBI_SLEEP"):  # long enough for two containers' steps to overlap
        time.sleep(float(os.environ["FAKE_MUSUBI_SLEEP"]))
    return args


def progress(label: str) -> None:
    for i in range(3):
        print(f"\r{label}: {i + 1}/3", end="", flush=True)
    print()


def values(args, flag):
    """Every value of an nargs='*' option."""
    if flag not in args:
        return []
    rest = args[args.index(flag) + 1:]
    return rest[:next((i for i, a in enumerate(rest) if a.startswith("--")), len(rest))]


# --- learning-rate schedules: transformers' schedule lambdas and musubi's get_lr_scheduler, emulated ----------

def _polynomial(step, *, num_warmup_steps, num_training_steps, lr_end, power, lr_init):
    if step < num_warmup_steps:
        return step / max(1, num_warmup_steps)
    if step > num_training_steps:
        return lr_end / lr_init
    remaining = 1 - (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
    return ((lr_init - lr_end) * remaining ** power + lr_end) / lr_init


def _cosine(step, *, num_warmup_steps, num_training_steps, num_cycles=0.5):
    if step < num_warmup_steps:
        return step / max(1, num_warmup_steps)
    progress = (step - num_warmup_steps) / max(1, num_training_steps - num_warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress)))


def _linear(step, *, num_warmup_steps, num_training_steps):
    if step < num_warmup_steps:
        return step / max(1, num_warmup_steps)
    return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))


def _constant(step, num_warmup_steps=0):
    return 1.0 if step >= num_warmup_steps else step / max(1, num_warmup_steps)


TRANSFORMERS = {"get_polynomial_decay_schedule_with_warmup": _polynomial, "get_cosine_schedule_with_warmup": _cosine,
                "get_linear_schedule_with_warmup": _linear}


def lr_lambda(args, max_train_steps: int, lr: float):
    """The lambda musubi's get_lr_scheduler builds for this argv (the schedules LoRA Gym presets use)."""
    kwargs = {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in values(args, "--lr_scheduler_args"))}
    scheduler_type = value(args, "--lr_scheduler_type")
    if scheduler_type:  # musubi calls it with the optimizer and --lr_scheduler_args only
        function = TRANSFORMERS[scheduler_type.removeprefix("transformers.optimization.")]
        return partial(function, **kwargs, **({"lr_init": lr} if function is _polynomial else {}))
    name = value(args, "--lr_scheduler") or "constant"
    warmup = int(value(args, "--lr_warmup_steps") or 0)
    if name == "constant":
        return _constant
    if name == "constant_with_warmup":
        return partial(_constant, num_warmup_steps=warmup)
    common = {"num_warmup_steps": warmup, "num_training_steps": max_train_steps}
    if name == "polynomial":
        return partial(_polynomial, **common, power=float(value(args, "--lr_scheduler_power") or 1), lr_init=lr,
                       **kwargs)
    return partial({"cosine": _cosine, "linear": _linear}[name], **common, **kwargs)


class Scheduler:
    """torch's LambdaLR as accelerate saves and loads it: state_dict restores base_lrs and last_epoch, and the
    optimizer's own lr, but the lambda is whatever the new command line built (a partial keeps no __dict__)."""

    def __init__(self, lr_lambda, lr: float):
        self.lr_lambda, self.base_lr, self.last_epoch = lr_lambda, lr, 0
        self.optimizer_lr = lr * lr_lambda(0)

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer_lr = self.base_lr * self.lr_lambda(self.last_epoch)

    def state(self) -> dict:
        return {"base_lrs": [self.base_lr], "last_epoch": self.last_epoch, "optimizer_lr": self.optimizer_lr}

    def load(self, state: dict) -> None:
        self.base_lr, self.last_epoch = state["base_lrs"][0], state["last_epoch"]
        self.optimizer_lr = state["optimizer_lr"]
