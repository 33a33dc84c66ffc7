"""Files to and from a RunPod network volume through its S3-compatible API (boto3).

The bucket is the network volume id and a key is a path on the volume (`lora-gym/output/...` is
`/workspace/lora-gym/output/...` in the pod). Each datacenter has its own endpoint,
`https://s3api-<datacenter>.runpod.io/`, with the datacenter id as the region (docs.runpod.io/storage/s3-api).

Transfers resume instead of restarting: an upload skips every file whose object has the same size and the
same sha256 (stored as object metadata), and big files go up in parts; a download writes `<name>.part` and
continues it with a Range request after an interruption, then renames it into place.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

from launcher.core.dataset import file_sha256
from launcher.core.errors import UserError
from launcher.core.inputs import inside

# RunPod: PutObject takes files under 500 MB, multipart parts are at most 500 MB.
MULTIPART_THRESHOLD = 256 * 1024 * 1024
PART_SIZE = 128 * 1024 * 1024
ACCESS_VARS = ("RUNPOD_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
SECRET_VARS = ("RUNPOD_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
KEYS_FIX = ("set RUNPOD_S3_ACCESS_KEY_ID (your user_... id) and RUNPOD_S3_SECRET_ACCESS_KEY (rps_...) from an "
            "S3 API key: https://www.console.runpod.io/user/settings (S3 API Keys)")


def endpoint_url(datacenter: str, environ=os.environ) -> str:
    return environ.get("RUNPOD_S3_ENDPOINT_URL") or f"https://s3api-{datacenter.lower()}.runpod.io/"


def _first(environ, names: tuple[str, ...]) -> str:
    return next((environ[n].strip() for n in names if environ.get(n, "").strip()), "")


def has_keys(environ=os.environ) -> bool:
    return bool(_first(environ, ACCESS_VARS) and _first(environ, SECRET_VARS))


def client(datacenter: str, environ=os.environ):
    """A boto3 S3 client for the datacenter's endpoint, with the S3 API key from the environment."""
    access, secret = _first(environ, ACCESS_VARS), _first(environ, SECRET_VARS)
    if not (access and secret):
        raise UserError(f"RunPod network volume transfers need an S3 API key: {KEYS_FIX}")
    from launcher.backends import require_sdk

    require_sdk("runpod")
    import boto3
    from botocore.config import Config

    # Long reads: RunPod may compute checksums before it answers for big files (see its known issues).
    config = Config(retries={"max_attempts": 8, "mode": "standard"}, read_timeout=600,
                    s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=endpoint_url(datacenter, environ), region_name=datacenter,
                        aws_access_key_id=access, aws_secret_access_key=secret, config=config)


def _progress(total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a nicety: a plain counter object keeps the call sites the same
        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass
        return _Null()
    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr, leave=False)


def _errors():
    from botocore.exceptions import BotoCoreError, ClientError

    return ClientError, BotoCoreError


def _fail(action: str, exc: Exception) -> UserError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code", "") if hasattr(exc, "response") else ""
    fix = KEYS_FIX if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") else \
        "run the same command again: finished files are skipped"
    reason = " ".join(str(exc).split())[:200]
    return UserError(f"network volume {action} failed ({reason}): {fix}")


def _remote(s3, bucket: str, key: str) -> dict | None:
    ClientError, _ = _errors()
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return {"size": head["ContentLength"], "sha256": (head.get("Metadata") or {}).get("sha256")}


def upload_files(s3, bucket: str, files: Iterable[tuple[Path, str]], desc: str = "upload") -> int:
    """Upload (local path, key) pairs; returns the bytes sent (0 when everything was already there)."""
    from boto3.s3.transfer import TransferConfig

    config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=PART_SIZE)
    ClientError, BotoCoreError = _errors()
    pending = []
    try:
        for path, key in files:
            size, digest = path.stat().st_size, file_sha256(path)
            remote = _remote(s3, bucket, key)
            if not (remote and remote["size"] == size and remote["sha256"] == digest):
                pending.append((path, key, size, digest))
        bar = _progress(sum(p[2] for p in pending), desc)
        try:
            for path, key, _size, digest in pending:
                s3.upload_file(str(path), bucket, key, ExtraArgs={"Metadata": {"sha256": digest}},
                               Config=config, Callback=bar.update)
        finally:
            bar.close()
    except (ClientError, BotoCoreError) as exc:
        raise _fail("upload", exc) from None
    return sum(p[2] for p in pending)


def upload_dir(s3, bucket: str, folder: Path, prefix: str) -> int:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return upload_files(s3, bucket, ((p, f"{prefix}/{p.relative_to(folder).as_posix()}") for p in files),
                        desc=f"upload {folder.name}")


def list_objects(s3, bucket: str, prefix: str) -> list[dict]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/")
    return [obj for page in pages for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]


def _download_one(s3, bucket: str, key: str, size: int, target: Path, bar) -> None:
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    if have > size:  # not a prefix of this object: start over
        part.unlink()
        have = 0
    bar.update(have)
    if have < size:
        extra = {"Range": f"bytes={have}-"} if have else {}
        body = s3.get_object(Bucket=bucket, Key=key, **extra)["Body"]
        with part.open("ab") as out:
            for chunk in body.iter_chunks(1024 * 1024):
                out.write(chunk)
                bar.update(len(chunk))
    if part.stat().st_size != size:
        raise UserError(f"download of {key} ended at {part.stat().st_size} of {size} bytes: run the same "
                        "command again to resume it")
    os.replace(part, target)


def download_prefix(s3, bucket: str, prefix: str, dest: Path) -> int:
    """Download every object under prefix into dest (keeping relative paths); returns files fetched."""
    ClientError, BotoCoreError = _errors()
    try:
        objects = list_objects(s3, bucket, prefix)
        todo = []
        for obj in objects:
            target = dest / obj["Key"][len(prefix.rstrip("/")) + 1:]
            if not inside(dest, target):  # a key such as `../x` on the volume never writes outside dest
                raise UserError(f"volume object {obj['Key']!r} would land outside {dest}: remove it from the volume")
            if not (target.is_file() and target.stat().st_size == obj["Size"]):
                todo.append((obj, target))
        bar = _progress(sum(o["Size"] for o, _ in todo), f"download {Path(prefix).name}")
        try:
            for obj, target in todo:
                target.parent.mkdir(parents=True, exist_ok=True)
                _download_one(s3, bucket, obj["Key"], obj["Size"], target, bar)
        finally:
            bar.close()
    except (ClientError, BotoCoreError) as exc:
        raise _fail("download", exc) from None
    return len(todo) if objects else -1


def read_json(s3, bucket: str, key: str) -> dict | None:
    import json

    ClientError, BotoCoreError = _errors()
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except (ClientError, BotoCoreError, ValueError):
        return None
