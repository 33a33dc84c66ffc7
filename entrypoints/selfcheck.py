"""Build-time self-check: plan every preset (and expert) of the image's family and parse each musubi
step's argv with the musubi-tuner parsers installed in the image. Any mismatch fails the build.

Importing musubi's Wan modules calls torch.cuda.current_device() at import time, which fails on a
build machine without a GPU; that one call is stubbed here, and only here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
from pathlib import Path

from launcher import contract
from launcher.core.checks import split_script
from launcher.core.dataset import DatasetLayout, MediaDir
from launcher.core.plan import make_plan
from launcher.core.presets import load_preset, preset_names

# A layout with both media kinds, so every step and dataset entry type appears in the plans.
SAMPLE_LAYOUT = DatasetLayout((MediaDir("images", "image", ("a.png",), "0" * 64),
                               MediaDir("videos", "video", ("b.mp4",), "1" * 64)))


@contextlib.contextmanager
def cuda_stubbed():
    try:
        import torch
    except ImportError:  # the test double of musubi-tuner does not need torch
        yield
        return
    original = torch.cuda.current_device
    torch.cuda.current_device = lambda: 0
    try:
        yield
    finally:
        torch.cuda.current_device = original


def musubi_parser(script: str) -> argparse.ArgumentParser:
    """The script's parser, built by the same functions musubi-tuner's main() uses (from the contract)."""
    parser = None
    for dotted in contract.load()["scripts"][script]["parser_built_by"]:
        module, function = dotted.split()[0].rsplit(".", 1)
        build = getattr(importlib.import_module(module), function)
        parser = build() if parser is None else build(parser)
    return parser


def parse_problems(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            parser.parse_args(args)
    except SystemExit:
        return stderr.getvalue().strip().splitlines()[-1]
    return None


def family_plans(family: str):
    for name in preset_names():
        preset = load_preset(name).preset
        if preset.family != family:
            continue
        for expert in ("high", "low") if preset.experts else (None,):
            yield f"{name}{'/' + expert if expert else ''}", make_plan(preset, expert, SAMPLE_LAYOUT, "selfcheck")


def check(family: str) -> list[str]:
    problems, parsers, checked = [], {}, 0
    with cuda_stubbed():
        for label, plan in family_plans(family):
            for step in plan.steps:
                _, script, args = split_script(step.argv)
                if script is None:
                    continue
                parser = parsers.get(script) or parsers.setdefault(script, musubi_parser(script))
                problem = parse_problems(parser, args)
                checked += 1
                if problem:
                    problems.append(f"{label} {step.name}: {problem}")
    if not checked:
        problems.append(f"no presets of family {family!r}")
    return problems


def label_problems(labels: dict[str, str], lock_path: str) -> list[str]:
    """The labels the launcher trusts must describe this code and this lock."""
    from launcher.weights import lockfile

    expected = {"ai.loragym.contract": contract.CONTRACT_VERSION,
                "ai.loragym.musubi-commit": contract.musubi_commit(),
                "ai.loragym.weights-lock": lockfile.digest(lockfile.read(lock_path))}
    return [f"label {key}={labels.get(key)!r} but this image has {value!r}: build it with make image-<family>"
            for key, value in expected.items() if labels.get(key) != value]


def write_labels(path: str, labels: dict[str, str]) -> None:
    Path(path).write_text(json.dumps(labels, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_gym_entrypoint.selfcheck")
    parser.add_argument("--family", required=True, choices=("wan21", "wan22"))
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="an image label to verify (with --lock) and record (with --write-labels)")
    parser.add_argument("--lock", default=os.environ.get("LORA_GYM_WEIGHTS_LOCK", ""))
    parser.add_argument("--write-labels", metavar="PATH", help="write the labels as JSON for run.json")
    args = parser.parse_args(argv)
    family = args.family
    labels = dict(item.partition("=")[::2] for item in args.label)
    problems = check(family) + (label_problems(labels, args.lock) if labels else [])
    if args.write_labels and not problems:
        write_labels(args.write_labels, labels)
    for problem in problems:
        print(f"error: self-check: {problem}", file=sys.stderr)
    if not problems:
        print(f"self-check: every {family} plan parses with the installed musubi-tuner")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
