"""Fake `accelerate` (test double): checks the `launch` options and runs the script in-process.

Several processes (`--num_processes N --multi_gpu`) run as ONE process told the world size in WORLD_SIZE, as
accelerate tells each of its processes; the fake training script then does what rank 0 does."""

import os
import sys


def main():
    args = sys.argv[1:]
    assert args[0] == "launch", "fake accelerate: only `launch` is supported"
    args = args[1:]
    options = {}
    flags = ("--multi_gpu",)  # accelerate's store_true options among those the plan uses
    while args and args[0].startswith("--"):
        if args[0] in flags:
            options[args[0]], args = True, args[1:]
            continue
        options[args[0]] = args[1]
        args = args[2:]
    assert options.get("--mixed_precision") in ("fp16", "bf16", "no"), "fake accelerate: bad --mixed_precision"
    processes = int(options.get("--num_processes", "1"))
    assert (processes > 1) == bool(options.get("--multi_gpu")), "fake accelerate: several processes need --multi_gpu"
    os.environ["WORLD_SIZE"] = str(processes)
    os.execv(sys.executable, [sys.executable, *args])


if __name__ == "__main__":
    main()
