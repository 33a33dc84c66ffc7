"""Build and push the LoRA Gym images: the logic behind `make image-wan21|wan22` and `make push-*`.

One Dockerfile (images/Dockerfile) serves every family, flavor and task subset; this module turns
the choices into the engine's command line: tag, build arguments (labels the launcher checks later),
named build contexts (the family's weights lock, optionally a musubi-tuner tree) and build secrets.
The HF token and the CA bundle only ever travel as `--secret` files, never as ARG, ENV or label.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launcher import __version__, contract
from launcher.core.errors import UserError

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = ("wan21", "wan22")
FLAVORS = ("full", "slim")
TASK_SETS = ("all", "t2v", "i2v")
# GitHub's registry refuses layers over 10 GB, and others have similar limits: stay under them.
DEFAULT_MAX_LAYER_GB = 9.0


@dataclass(frozen=True)
class BuildRequest:
    family: str
    flavor: str = "full"
    tasks: str = "all"
    engine: str = "docker"
    registry: str = ""
    base_image: str | None = None
    musubi_dir: str | None = None  # a musubi-tuner tree to use instead of the pinned git commit
    lock_dir: str | None = None  # default images/<family>/
    network: str | None = None  # e.g. "host" where builds must reach a proxy or a local fake hub
    build_args: tuple[str, ...] = field(default=())  # extra KEY=VALUE, e.g. TRAINING_STACK=0 in tests
    ca_file: str | None = None
    context: str | None = None  # the source tree to build from; default this checkout
    max_layer_gb: float = DEFAULT_MAX_LAYER_GB


def image_tag(family: str, flavor: str = "full", tasks: str = "all", registry: str = "",
              version: str = __version__) -> str:
    """`<registry>/lora-gym-<family>:<version>[-slim][-<tasks>]`; the full all-task image has the bare version."""
    suffix = ("-slim" if flavor == "slim" else "") + ("" if tasks == "all" else f"-{tasks}")
    prefix = f"{registry.rstrip('/')}/" if registry else ""
    return f"{prefix}lora-gym-{family}:{version}{suffix}"


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def lock_digest(lock_dir: Path) -> str:
    from launcher.weights import lockfile

    return lockfile.digest(lockfile.read(lock_dir / "weights.lock.json"))


def max_layer_bytes(gb: float) -> int:
    if not 0.002 <= gb <= 1000:  # also refuses nan and inf
        raise UserError(f"MAX_LAYER_GB={gb:g} is out of range: use a number of GB from 0.002 to 1000 (default 9)")
    return int(gb * 1e9)


def _lock_dir(req: BuildRequest) -> Path:
    return Path(req.lock_dir or Path(req.context or ROOT) / "images" / req.family)


def ensure_lock(req: BuildRequest) -> Path:
    """The family's lock; a missing one is resolved from the Hub first (never a present one: that is on purpose)."""
    from launcher.weights import lockfile

    path = _lock_dir(req) / "weights.lock.json"
    if path.exists():
        return path
    endpoint = os.environ.get("HF_ENDPOINT") or None
    print(f"{path} is missing: pinning every {req.family} file at the Hub's current commit "
          f"({endpoint or 'https://huggingface.co'})", flush=True)
    token = os.environ.get("HF_TOKEN") or None
    try:
        doc = lockfile.resolve(req.family, endpoint=endpoint, token=token)
    except UserError:
        raise
    except Exception as exc:  # huggingface_hub's network and HTTP errors: one line, never the token
        from launcher.weights.fetch import one_line

        raise UserError(f"cannot pin the weights lock from the Hub ({one_line(exc, token)[:300]}): run on a machine "
                        f"that reaches it, or put a lock at {path}") from None
    lockfile.write(path, doc)
    print(f"wrote {path} ({len(doc['files'])} files pinned by commit, size and sha256): commit it, so every "
          f"build bakes the same bytes; `make lock-weights FAMILY={req.family}` refreshes it on purpose", flush=True)
    return path


def _build_args(req: BuildRequest, lock_dir: Path) -> dict[str, str]:
    args = {"FAMILY": req.family, "FLAVOR": req.flavor, "TASKS": req.tasks, "VERSION": __version__,
            "MAX_LAYER_BYTES": str(max_layer_bytes(req.max_layer_gb)),
            "GIT_REVISION": git_revision(), "MUSUBI_COMMIT": contract.musubi_commit(),
            "CONTRACT_VERSION": contract.CONTRACT_VERSION, "WEIGHTS_LOCK_DIGEST": lock_digest(lock_dir)}
    if req.base_image:
        args["BASE_IMAGE"] = req.base_image
    if os.environ.get("HF_ENDPOINT"):
        args["HF_ENDPOINT"] = os.environ["HF_ENDPOINT"]
    for item in req.build_args:
        key, _, value = item.partition("=")
        args[key] = value
    return args


def build_command(req: BuildRequest, token_file: str | None = None) -> list[str]:
    """The engine command line for one image (secrets as files; their values never appear here)."""
    root = Path(req.context or ROOT)
    lock_dir = _lock_dir(req)
    engine = [req.engine, "build"] if req.engine == "podman" else [req.engine, "buildx", "build", "--load"]
    tag = image_tag(req.family, req.flavor, req.tasks, req.registry)
    argv = [*engine, "-f", str(root / "images" / "Dockerfile"), "-t", tag]
    argv += ["--build-context", f"lock={lock_dir}"]
    if req.musubi_dir:
        argv += ["--build-context", f"musubi={req.musubi_dir}"]
    for key, value in _build_args(req, lock_dir).items():
        argv += ["--build-arg", f"{key}={value}"]
    if token_file:
        argv += ["--secret", f"id=hf_token,src={token_file}"]
    if req.ca_file:
        argv += ["--secret", f"id=ca,src={req.ca_file}"]
    if req.network:
        argv += ["--network", req.network]
    return [*argv, str(root)]


def build(req: BuildRequest, dry_run: bool = False) -> int:
    max_layer_bytes(req.max_layer_gb)  # a bad cap is refused before any network or engine work
    if not dry_run:
        ensure_lock(req)
    token = os.environ.get("HF_TOKEN", "")
    with tempfile.TemporaryDirectory(prefix="lora-gym-build-") as tmp:
        token_file = None
        if token:  # a file readable only by us, deleted with the folder: the engine mounts it as a secret
            token_file = os.path.join(tmp, "hf_token")
            fd = os.open(token_file, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(token)
        argv = build_command(req, token_file)
        print(shlex.join(argv), flush=True)
        return 0 if dry_run else subprocess.run(argv).returncode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launcher.imagebuild", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("build", "push", "tag"))
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--flavor", default="full", choices=FLAVORS)
    parser.add_argument("--tasks", default="all", choices=TASK_SETS)
    parser.add_argument("--engine", default="docker", choices=("docker", "podman"))
    parser.add_argument("--registry", default="")
    parser.add_argument("--base-image")
    parser.add_argument("--musubi-dir")
    parser.add_argument("--lock-dir")
    parser.add_argument("--network")
    parser.add_argument("--ca-file")
    parser.add_argument("--build-arg", action="append", default=[])
    parser.add_argument("--context", help="source tree to build from (default: this checkout)")
    parser.add_argument("--max-layer-gb", type=float, default=DEFAULT_MAX_LAYER_GB,
                        help="no image layer larger than this (GB); bigger weight files are stored in pieces")
    parser.add_argument("--dry-run", action="store_true", help="print the command only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from launcher.core.errors import report

    try:
        return _main(_parser().parse_args(argv))
    except UserError as exc:
        return report(exc)


def _main(args: argparse.Namespace) -> int:
    tag = image_tag(args.family, args.flavor, args.tasks, args.registry)
    if args.action == "tag":
        print(tag)
        return 0
    if args.action == "push":
        if not args.registry:
            print("error: pushing needs a registry: make push-wan22 REGISTRY=ghcr.io/you", file=sys.stderr)
            return 2
        command = [args.engine, "push", tag]
        print(shlex.join(command), flush=True)
        return 0 if args.dry_run else subprocess.run(command).returncode
    req = BuildRequest(args.family, args.flavor, args.tasks, args.engine, args.registry, args.base_image,
                       args.musubi_dir, args.lock_dir, args.network, tuple(args.build_arg), args.ca_file,
                       args.context, args.max_layer_gb)
    return build(req, args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
