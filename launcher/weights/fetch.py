"""Fetch locked weight files and tokenizers from the Hugging Face Hub, each verified by sha256.

The Dockerfile copies this file alone into the image before any other project code, so editing the project
never invalidates the weight layers: it imports only the standard library, and huggingface_hub lazily.

  python fetch.py tokenizers --lock LOCK --tasks all --hf-home /opt/hf
  python fetch.py all --lock LOCK --tasks all --dest /weights --hf-home /opt/hf

Only files named by the lock are downloaded, always at the locked commit. The token comes from HF_TOKEN or
the build secret /run/secrets/hf_token and is never printed; HF_ENDPOINT picks another Hub.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

TOKEN_SECRET = "/run/secrets/hf_token"
TASKS = ("i2v", "t2v")
KINDS = ("tokenizer", "weight")
STATE_DIR = ".lora-gym"  # under the weights folder: verification stamps and download locks
_HEX40, _HEX64 = re.compile(r"^[0-9a-f]{40}$"), re.compile(r"^[0-9a-f]{64}$")


class FetchError(Exception):
    """A download or verification failure, already phrased as one line."""


# --- the lock ----------------------------------------------------------------------------------------------

def entry_name(entry: dict) -> str:
    return f"{entry.get('repo')}:{entry.get('path')}"


def entry_problem(entry) -> str | None:
    """What is wrong with one lock entry, or None. Shared with launcher.weights.lockfile.validate."""
    if not isinstance(entry, dict):
        return "is not an object"
    for key in ("repo", "path"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            return f"has no {key}"
    if not isinstance(entry.get("revision"), str) or not _HEX40.match(entry["revision"]):
        return f"has no 40-hex commit revision (got {entry.get('revision')!r})"
    if not isinstance(entry.get("sha256"), str) or not _HEX64.match(entry["sha256"]):
        return f"has no 64-hex sha256 (got {entry.get('sha256')!r})"
    size = entry.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return f"has no integer size (got {size!r})"
    if entry.get("kind") not in KINDS:
        return f"has kind {entry.get('kind')!r}, not weight or tokenizer"
    tasks = entry.get("tasks")
    if not isinstance(tasks, list) or not tasks or not set(tasks) <= set(TASKS):
        return f"has tasks {tasks!r}, not a list of t2v/i2v"
    if not isinstance(entry.get("shardable", False), bool):
        return f"has shardable {entry['shardable']!r}, not true or false"
    return None


def load_lock(path: str | Path) -> list[dict]:
    """The lock's entries, each checked; FetchError names the first bad one."""
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FetchError(f"cannot read the weights lock {path}: {exc}") from None
    for entry in entries:
        problem = entry_problem(entry)
        if problem:
            raise FetchError(f"weights lock {path}: entry {entry_name(entry)} {problem}: regenerate it with "
                             "make lock-weights")
    return entries


def parse_tasks(text: str) -> set[str]:
    tasks = set(TASKS) if text.strip() == "all" else {t.strip() for t in text.split(",") if t.strip()}
    if not tasks or not tasks <= set(TASKS):
        raise FetchError(f"--tasks {text!r}: use all or a comma-separated list of {', '.join(TASKS)}")
    return tasks


def wanted(entry: dict, tasks: set[str]) -> bool:
    return bool(set(entry["tasks"]) & tasks)


# --- credentials and the Hub -------------------------------------------------------------------------------

def read_token() -> str | None:
    """HF_TOKEN, else the build secret file; None for anonymous downloads."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token and os.path.isfile(TOKEN_SECRET):
        token = Path(TOKEN_SECRET).read_text(encoding="utf-8").strip()
    return token or None


def read_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _hub():
    """huggingface_hub, imported on first use and forced online.

    The image sets HF_HUB_OFFLINE=1 so that musubi (a child process, which keeps that setting) never reaches the
    Hub; fetching the locked files by commit sha is the one sanctioned download, so this process goes online.
    """
    import huggingface_hub
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = False
    return huggingface_hub


def one_line(exc: BaseException, token: str | None) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.replace(token, "***") if token else text


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _mismatch(entry: dict, path: Path) -> str | None:
    """Why the file at `path` is not the locked file, or None."""
    size = path.stat().st_size
    if size != entry["size"]:
        return f"size mismatch: expected {entry['size']} bytes, got {size}"
    got = sha256_file(path)
    return None if got == entry["sha256"] else f"sha256 mismatch: expected {entry['sha256']}, got {got}"


# --- weights: <dest>/<repo>/<path> -------------------------------------------------------------------------

def _state(dest: Path, kind: str, entry: dict, suffix: str) -> Path:
    return dest / STATE_DIR / kind / entry["repo"] / (entry["path"] + suffix)


def is_verified(final: Path, entry: dict, dest: Path) -> bool:
    """Whether `final` is the locked file. A stamp (size, mtime) spares re-hashing tens of GB at every start."""
    if not final.is_file() or final.stat().st_size != entry["size"]:
        return False
    with contextlib.suppress(OSError, ValueError):
        if json.loads(_state(dest, "verified", entry, ".json").read_text(encoding="utf-8")) == _stamp(final, entry):
            return True
    if sha256_file(final) != entry["sha256"]:
        return False
    stamp(final, entry, dest)
    return True


def _stamp(final: Path, entry: dict) -> dict:
    stat = final.stat()
    return {"sha256": entry["sha256"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def stamp(final: Path, entry: dict, dest: Path) -> None:
    """Record that `final` was just checked against the lock (by whoever hashed it), so no start re-hashes it."""
    stamp_path = _state(dest, "verified", entry, ".json")
    with contextlib.suppress(OSError):  # a read-only weights mount just re-hashes next time
        stamp_path.parent.mkdir(parents=True, exist_ok=True)
        stamp_path.write_text(json.dumps(_stamp(final, entry)), encoding="utf-8")


@contextlib.contextmanager
def exclusive(dest: Path, entry: dict):
    """Serialize downloads of one file by containers sharing a weights volume; sha256 is the real guard."""
    lock_path = _state(dest, "locks", entry, ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
        except (ImportError, OSError):
            pass  # no flock on this filesystem: verification still rejects a mixed file
        yield


def _download(entry: dict, part: Path, endpoint: str | None, token: str | None) -> None:
    """Append the rest of the file to `part`: a partial download from an interrupted run is resumed."""
    hub = _hub()
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    # hf_hub_download itself writes to a process-unique temporary file that it deletes on failure (huggingface_hub
    # >= 1.x), so only this persistent .part lets a restarted container continue a 28 GB download.
    url = hub.hf_hub_url(entry["repo"], entry["path"], revision=entry["revision"], endpoint=endpoint)
    while True:
        have = _part_size(part, entry["size"])
        try:
            with open(part, "ab") as f:
                http_get(url, f, resume_size=have, headers=build_hf_headers(token=token),
                         expected_size=entry["size"], displayed_filename=entry["path"].rsplit("/", 1)[-1])
            return
        except Exception:
            # A connection dropped mid-body: go on from the new end while each attempt makes progress (newer
            # huggingface_hub does this itself; 0.x does not). An attempt that got nothing is a real error.
            if _part_size(part, entry["size"]) <= have:
                raise


def _part_size(part: Path, size: int) -> int:
    """Bytes already downloaded; a .part longer than the file cannot be a prefix of it and starts over."""
    have = part.stat().st_size if part.exists() else 0
    if have > size:
        part.unlink()
        return 0
    return have


def _fetch_weight(entry: dict, dest: Path, endpoint: str | None, token: str | None) -> bool:
    final = dest / entry["repo"] / entry["path"]
    if is_verified(final, entry, dest):
        return False
    final.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(dest, entry):
        if is_verified(final, entry, dest):  # another container finished it while we waited
            return False
        final.unlink(missing_ok=True)  # a wrong file must not pass a later size-only check
        part = final.with_name(final.name + ".part")
        _download(entry, part, endpoint, token)
        problem = _mismatch(entry, part)
        if problem:
            part.unlink(missing_ok=True)
            raise FetchError(f"{entry_name(entry)}@{entry['revision'][:12]}: {problem}; the download was deleted")
        os.replace(part, final)  # atomic: the final path only ever holds a verified file
        stamp(final, entry, dest)  # hashed just above: no second pass over the file
    return True


# --- tokenizers: the HF cache, where transformers looks with HF_HUB_OFFLINE=1 ------------------------------

def _write_ref(storage: Path, ref: str, revision: str) -> None:
    """refs/<ref> = revision: offline, hf_hub_download maps the default revision "main" to a snapshot this way.

    It reads the file verbatim (no strip), so no trailing newline.
    """
    path = storage / "refs" / ref
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{ref}.{os.getpid()}.tmp")
    tmp.write_text(revision, encoding="utf-8")
    os.replace(tmp, path)


def _evict(pointer: Path) -> None:
    blob = pointer.resolve()
    pointer.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def _fetch_tokenizer(entry: dict, hf_home: str | Path, endpoint: str | None, token: str | None) -> bool:
    hub = _hub()
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(hf_home) / "hub"
    storage = cache / repo_folder_name(repo_id=entry["repo"], repo_type="model")
    pointer = storage / "snapshots" / entry["revision"] / entry["path"]
    downloaded = not pointer.exists()
    got = Path(hub.hf_hub_download(entry["repo"], entry["path"], revision=entry["revision"], cache_dir=cache,
                                   token=token, endpoint=endpoint))
    problem = _mismatch(entry, got)
    if problem:
        _evict(got)
        raise FetchError(f"{entry_name(entry)}@{entry['revision'][:12]}: {problem}; the download was deleted")
    _write_ref(storage, "main", entry["revision"])
    return downloaded


def fetch_entry(entry: dict, dest_dir: str | Path, hf_home: str | Path, endpoint: str | None = None,
                token: str | None = None) -> bool:
    """Make one locked file present and verified; True when it had to be downloaded. Raises FetchError."""
    problem = entry_problem(entry)
    if problem:
        raise FetchError(f"lock entry {entry_name(entry)} {problem}")
    try:
        if entry["kind"] == "tokenizer":
            return _fetch_tokenizer(entry, hf_home, endpoint, token)
        return _fetch_weight(entry, Path(dest_dir), endpoint, token)
    except FetchError:
        raise
    except Exception as exc:  # huggingface_hub and OS errors become one line; the token never shows
        raise FetchError(f"{entry_name(entry)}@{entry['revision'][:12]}: download failed: "
                         f"{one_line(exc, token)}") from None


# --- command line -----------------------------------------------------------------------------------------

def gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def fetch_many(entries: list[dict], dest: str | Path, hf_home: str | Path, token: str | None, log=print):
    """Fetch each entry with a progress line; returns (downloaded, present, downloaded bytes)."""
    downloaded = present = size = 0
    for number, entry in enumerate(entries, 1):
        started = time.monotonic()
        prefix = f"[{number}/{len(entries)}] {entry_name(entry)} ({gb(entry['size'])})"
        if fetch_entry(entry, dest, hf_home, read_endpoint(), token):
            downloaded, size = downloaded + 1, size + entry["size"]
            log(f"{prefix}: downloaded and verified in {time.monotonic() - started:.0f} s")
        else:
            present += 1
            log(f"{prefix}: already present")
    return downloaded, present, size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fetch.py", description="Fetch locked Hub files, verified by sha256.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("tokenizers", "every tokenizer file, into the HF cache"),
                       ("all", "every weight file the tasks need (slim flavor, at start)")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--lock", required=True)
        sub.add_argument("--tasks", default="all", help="all, or a comma-separated list of t2v, i2v")
        sub.add_argument("--hf-home", required=name == "tokenizers", default="/opt/hf")
        if name != "tokenizers":
            sub.add_argument("--dest", required=True, help="the weights folder (<dest>/<repo>/<path>)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args, token = _parser().parse_args(argv), None
    try:
        entries, token = load_lock(args.lock), read_token()
        tasks, kind = parse_tasks(args.tasks), "tokenizer" if args.command == "tokenizers" else "weight"
        chosen = [e for e in entries if e["kind"] == kind and wanted(e, tasks)]
        downloaded, present, size = fetch_many(chosen, getattr(args, "dest", ""), args.hf_home, token)
        print(f"downloaded {downloaded} files, {gb(size)}; already present {present}")
        return 0
    except KeyboardInterrupt:
        print("error: interrupted; run again to resume the download", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, never a traceback (FetchError is already phrased for the user)
        print(f"error: {one_line(exc, token)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
