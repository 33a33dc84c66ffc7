"""Fake `accelerate` (test double): checks the `launch` options and runs the script in-process."""

import os
import sys


def main():
    args = sys.argv[1:]
    assert args[0] == "launch", "fake accelerate: only `launch` is supported"
    args = args[1:]
    options = {}
    while args and args[0].startswith("--"):
        options[args[0]] = args[1]
        args = args[2:]
    assert options.get("--mixed_precision") in ("fp16", "bf16", "no"), "fake accelerate: bad --mixed_precision"
    os.execv(sys.executable, [sys.executable, *args])


if __name__ == "__main__":
    main()
