"""`python -m launcher.weights`: print a family's file skeleton, or pin it against the Hub into a lock file.

  python -m launcher.weights skeleton --family wan22
  python -m launcher.weights lock --family wan22 --out images/wan22/weights.lock.json [--endpoint URL] [--force]

The token comes from HF_TOKEN only and is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from launcher.core.errors import UserError, report
from launcher.weights import lockfile
from launcher.weights.fetch import one_line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launcher.weights", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    skeleton = commands.add_parser("skeleton", help="print the files the family's presets need, unpinned")
    skeleton.add_argument("--family", required=True, choices=lockfile.FAMILIES)
    lock = commands.add_parser("lock", help="resolve the skeleton on the Hub and write the lock file")
    lock.add_argument("--family", required=True, choices=lockfile.FAMILIES)
    lock.add_argument("--out", help="default: images/<family>/weights.lock.json")
    lock.add_argument("--endpoint", default=os.environ.get("HF_ENDPOINT"), help="default: HF_ENDPOINT or the Hub")
    lock.add_argument("--force", action="store_true", help="replace an existing lock file")
    return parser


def _lock(args) -> None:
    token = os.environ.get("HF_TOKEN") or None
    out = args.out or f"images/{args.family}/weights.lock.json"
    doc = lockfile.resolve(args.family, endpoint=args.endpoint, token=token)
    lockfile.write(out, doc, overwrite=args.force)
    weights = [f for f in doc["files"] if f["kind"] == "weight"]
    size = sum(f["size"] for f in weights)
    print(f"wrote {out}: {len(weights)} weight files ({size / 1e9:.2f} GB), "
          f"{len(doc['files']) - len(weights)} tokenizer files; digest sha256:{lockfile.digest(doc)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    token = os.environ.get("HF_TOKEN")
    try:
        if args.command == "skeleton":
            print(json.dumps(lockfile.skeleton(args.family), indent=2))
        else:
            _lock(args)
        return 0
    except UserError as exc:
        return report(exc)
    except Exception as exc:  # Hub and network errors: one line, never a traceback, never the token
        print(f"error: {one_line(exc, token)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
