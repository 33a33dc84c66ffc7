"""Test double of the AWS CLI, for the one command `launcher pull` makes it run: SkyPilot's own bucket download,
`aws s3 sync --no-follow-symlinks s3://BUCKET/PREFIX DEST` (sky/cloud_stores.py, S3CloudStorage).

The "bucket" is the folder $FAKE_S3_ROOT/BUCKET; every key under PREFIX/ is copied to DEST, keeping its path
below PREFIX, as the real command does (a missing prefix downloads nothing and succeeds, as there). Any other
command line fails with exit code 2, so a changed command shows up in the test instead of passing unseen.
Each call's argv is appended to $FAKE_S3_ROOT/calls.log.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    root = Path(os.environ["FAKE_S3_ROOT"])
    with (root / "calls.log").open("a", encoding="utf-8") as log:
        log.write(" ".join(argv) + "\n")
    if len(argv) != 5 or argv[:3] != ["s3", "sync", "--no-follow-symlinks"] or not argv[3].startswith("s3://"):
        print(f"fake aws: unsupported command line: {argv}", file=sys.stderr)
        return 2
    bucket, _, prefix = argv[3].removeprefix("s3://").partition("/")
    if not (root / bucket).is_dir():
        print(f"fatal error: An error occurred (NoSuchBucket): {bucket}", file=sys.stderr)
        return 1
    source, dest = root / bucket / prefix, Path(argv[4])
    for path in sorted(source.rglob("*")) if source.is_dir() else []:
        if path.is_file():
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            print(f"download: s3://{bucket}/{path.relative_to(root / bucket)} to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
