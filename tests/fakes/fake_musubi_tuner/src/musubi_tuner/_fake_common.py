"""Shared behaviour of the fake musubi-tuner scripts (a test double).

Parsers are built from the real musubi-tuner contract data, split like the real ones: a common
`setup_parser_common()` and a per-script `wan_setup_parser(parser)`.
"""

import argparse
import json
import os
import signal
import sys
import time
import tomllib
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
    if os.environ.get("FAKE_MUSUBI_HANG") == script:
        def on_term(signum, frame):
            print(f"fake musubi: {script} got signal {signum}", flush=True)
            sys.exit(0)  # a step that exits 0 after SIGTERM must still stop the run
        signal.signal(signal.SIGTERM, on_term)
        print("ready", flush=True)
        time.sleep(60)
    return args


def cache_dirs(args) -> list[Path]:
    config = tomllib.loads(Path(value(args, "--dataset_config")).read_text())
    return [Path(d["cache_directory"]) for d in config["datasets"]]


def progress(label: str) -> None:
    for i in range(3):
        print(f"\r{label}: {i + 1}/3", end="", flush=True)
    print()
