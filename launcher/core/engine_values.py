"""Values the launcher hands to a container engine or a platform, one check per kind: image references, GPU ids,
volume and bucket names. Each follows the platform's own rule (cited beside it), returns the value it checked,
or raises UserError with one line naming the part that is wrong and how to write it. Every backend calls these
(launcher/backends/*: the spec it builds for a dry run, a launch and a sweep), so a value is refused the same way
wherever it goes. Standard library only.
"""

from __future__ import annotations

import re

from launcher.core.errors import UserError
from launcher.core.inputs import has_control
from launcher.core.inputs import shown as _quoted

# --- image references: Docker's reference grammar (github.com/distribution/reference, regexp.go and
# reference.go: `reference := name [":" tag] ["@" digest]`; a repository name is at most 255 characters).
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
PATH_COMPONENT = re.compile(rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
# The digest algorithms a registry verifies (github.com/opencontainers/go-digest, algorithm.go: sha256, sha384,
# sha512, each lower-case hex of its length); `reference.Parse` refuses any other.
DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
NAME_MAX = 255
SHOWN_MAX = 80  # a longer value is cut in the message, which stays one readable line


def shown(text: str) -> str:
    return _quoted(text if len(text) <= SHOWN_MAX else text[: SHOWN_MAX - 3] + "...")


IMAGE_EXAMPLE = "e.g. ghcr.io/you/lora-gym-wan22:0.1.0 or NAME@sha256:<64 hex digits>"


def _image_problem(ref: str) -> str | None:
    """What is wrong with `ref` as a Docker image reference, or None."""
    if not ref.strip() or has_control(ref) or any(ch.isspace() for ch in ref):
        return "is empty or holds spaces or control characters"
    name, _, digest = ref.partition("@")
    if digest:
        algorithm, _, hexa = digest.partition(":")
        if DIGEST_HEX.get(algorithm) != len(hexa) or not re.fullmatch(r"[0-9a-f]+", hexa):
            return f"has the digest {shown(digest)}: write sha256: and 64 lower-case hex digits"
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name[: len(name) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
        if not TAG.fullmatch(tag):
            return (f"has the tag {shown(tag)}: a tag is 1-128 letters, digits, '_', '.' or '-', not starting with "
                    "'.' or '-'")
    first, slash, rest = name.partition("/")
    domain = first if slash and ("." in first or ":" in first or first == "localhost") else None
    if domain is not None and not DOMAIN.fullmatch(domain):
        return f"names the registry {shown(domain)}: write a host name or address, optionally with :PORT"
    path = rest if domain is not None else name
    if len(path) > NAME_MAX:
        return f"has a repository name of {len(path)} characters, over Docker's {NAME_MAX}"
    for part in path.split("/"):
        if PATH_COMPONENT.fullmatch(part):
            continue
        if PATH_COMPONENT.fullmatch(part.lower()):
            return f"has upper-case letters in {shown(part)}: repository names are lower-case"
        return (f"has {shown(part)} in its repository name: each '/' part is lower-case letters and digits, joined "
                "by '.', '_', '__' or '-'")
    return None


def image_reference(ref: str, what: str = "--image") -> str:
    """`ref` if Docker can pull it by that name; else one line naming the wrong part."""
    problem = _image_problem(ref)
    if problem:
        raise UserError(f"{what} {shown(ref)} {problem} ({IMAGE_EXAMPLE})")
    return ref


# --- GPU ids: what Docker's `--gpus device=...` and the NVIDIA Container Toolkit take (NVIDIA_VISIBLE_DEVICES:
# "a comma-separated list of GPU UUID(s) or index(es)", MIG devices as `GPU:MIG` indexes or MIG-<UUID>;
# docs.nvidia.com/datacenter/cloud-native/container-toolkit, "Specialized Configurations for Docker").
GPU_INDEX = re.compile(r"0|[1-9][0-9]{0,3}")
GPU_UUID = re.compile(r"(?:GPU|MIG)-[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
MIG_INDEX = re.compile(rf"(?:{GPU_INDEX.pattern}):(?:{GPU_INDEX.pattern})")
# A typo guard where this machine's GPUs cannot be counted: NVML numbers a host's GPUs from 0, and the largest
# single hosts hold 16; an index of 64 or more is a slip, not a GPU.
MAX_GPU_INDEX = 63
GPU_IDS_FIX = "use all, none, or GPU indexes such as 0,1 (or UUIDs, `nvidia-smi -L`), each once"


def _index(gpu: str) -> int | None:
    head = gpu.split(":", 1)[0]
    return int(head) if GPU_INDEX.fullmatch(head) else None


def gpu_ids(value: str, what: str = "--gpu-ids", count: int | None = None) -> tuple[str, ...] | str | None:
    """"all", None for `none`, or the GPU ids: non-negative indexes (below `count`, this machine's GPUs, when it is
    known) or UUIDs, none repeated."""
    value = value.strip()
    if value in ("all", "none"):
        return None if value == "none" else "all"
    ids = tuple(part.strip() for part in value.split(","))
    for gpu in ids:
        if not (GPU_INDEX.fullmatch(gpu) or MIG_INDEX.fullmatch(gpu) or GPU_UUID.fullmatch(gpu)):
            why = "is negative" if gpu.startswith("-") and gpu[1:].isdigit() else "is not a GPU index or UUID"
            raise UserError(f"{what} {shown(value)}: {shown(gpu)} {why}: {GPU_IDS_FIX}")
    if repeated := sorted({gpu for gpu in ids if ids.count(gpu) > 1}):
        raise UserError(f"{what} {shown(value)} names GPU {', '.join(repeated)} more than once: {GPU_IDS_FIX}")
    limit, where = (count, f"this machine has {count} GPU{'s' if count != 1 else ''}") if count is not None else \
        (MAX_GPU_INDEX + 1, f"indexes stop at {MAX_GPU_INDEX}")
    if beyond := [gpu for gpu in ids if (_index(gpu) or 0) >= limit]:
        raise UserError(f"{what} {shown(value)}: GPU {beyond[0]} is out of range ({where}, numbered from 0): "
                        "see `nvidia-smi -L`")
    return ids


# --- volume and bucket names

# Docker's volume names (moby daemon/names/names.go RestrictedNamePattern, which the local volume driver checks,
# volume/local/local.go validateName): a letter or digit, then at least one of letters, digits, '_', '.', '-'.
DOCKER_VOLUME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")


def docker_volume(name: str, what: str = "--cache-volume") -> str:
    # A name with '/' would silently become a bind mount of a host folder: only volume names are accepted.
    if not DOCKER_VOLUME.fullmatch(name) or len(name) > 255:
        raise UserError(f"{what} {shown(name)} is not a volume name: use 2-255 letters, digits, '_', '.' and '-', "
                        "starting with a letter or digit")
    return name


# Modal's object names, volumes included (modal 1.6.4, modal/_utils/name_utils.py is_valid_object_name, which
# Volume.from_name checks): at most 64 of letters, digits, '-', '_', '.', and not shaped like an App id.
MODAL_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,64}")
MODAL_APP_ID = re.compile(r"ap-[a-zA-Z0-9]{22}")


def modal_volume(name: str, what: str = "--cache-volume") -> str:
    if not MODAL_NAME.fullmatch(name) or MODAL_APP_ID.fullmatch(name):
        raise UserError(f"{what} {shown(name)} is not a Modal volume name: use up to 64 letters, digits, '-', '_' "
                        "and '.' (Modal's rule for names)")
    return name


# S3's bucket naming rules (docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html, general purpose
# buckets; GCS's are a superset): 3-63 lower-case letters, digits, '.', '-', a letter or digit at each end, no
# '..', not an IP address, and none of the prefixes and suffixes S3 reserves.
BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


def bucket_name(name: str, what: str = "--volume") -> str:
    if not BUCKET.fullmatch(name) or ".." in name or re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        raise UserError(f"{what} {shown(name)} is not a bucket name: use 3-63 lower-case letters, digits, '-' or "
                        "'.', starting and ending with a letter or digit (S3's rules)")
    if name.startswith(BUCKET_RESERVED_PREFIXES) or name.endswith(BUCKET_RESERVED_SUFFIXES):
        raise UserError(f"{what} {shown(name)} uses a prefix or suffix S3 reserves "
                        f"({', '.join(BUCKET_RESERVED_PREFIXES + BUCKET_RESERVED_SUFFIXES)}): choose another name")
    return name


# RunPod network volume ids, copied from the console (Storage) or GET /networkvolumes. RunPod documents no grammar
# for them; the id goes into API paths and is the bucket of the volume's S3-compatible API, so only an id's
# characters pass (letters, digits, '_', '-').
RUNPOD_VOLUME_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def runpod_volume_id(value: str, what: str = "--volume") -> str:
    if not RUNPOD_VOLUME_ID.fullmatch(value):
        raise UserError(f"{what} {shown(value)} is not a RunPod network volume id: copy the id from RunPod's console "
                        "(Storage)")
    return value
