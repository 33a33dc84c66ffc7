"""The SkyPilot run's bucket: its default name, where SkyPilot made it, and `launcher pull` from it.

Bucket names are one global namespace on S3 and GCS, so the default is `lora-gym-<family>-<id>`, where <id>
is 10 random hex digits made once per user and kept in `$LORA_GYM_HOME/skypilot-store-id` (next to the run
records, launcher/runs.py). Random rather than derived from a user or host name: those repeat across people
(`ubuntu`, `root`), and a name someone else can predict is a name they can take first. Kept, so every run of
a family on this machine shares one bucket and so its caches; the run record names the bucket, so `status`
and `pull` never depend on the id. Another machine gets another bucket, unless `--volume NAME` names one.

SkyPilot chooses the store (S3, GCS, R2, ...) from the enabled clouds when it creates the bucket at launch
(sky/utils/controller_utils.py, maybe_translate_local_file_mounts_and_sync_up); its storage table, `sky
storage ls`, says which, and the run record keeps the bucket's URL for `pull`. `pull` runs the download
command SkyPilot itself uses for a bucket folder (sky/cloud_stores.py, make_sync_dir_command: `aws s3 sync`,
`gsutil rsync`, ...) on this machine, with this machine's cloud CLI and credentials.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

from launcher.core.engine_values import bucket_name
from launcher.core.errors import UserError
from launcher.core.inputs import shown
from launcher.core.state import home

ID_FILE = "skypilot-store-id"
ID = re.compile(r"[0-9a-f]{10}")


def user_id() -> str:
    """This user's random store id, made on first use; of two launchers making it at once, the first wins."""
    path = home() / ID_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        draft = path.with_name(f".{ID_FILE}.{os.getpid()}")
        draft.write_text(secrets.token_hex(5) + "\n", encoding="utf-8")
        try:
            os.link(draft, path)  # fails when another launcher made it first: then its id is the one
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    found = path.read_text(encoding="utf-8").strip()
    if not ID.fullmatch(found):
        raise UserError(f"{path} holds {shown(found)}, not a store id (10 hex digits): delete it to make a new "
                        "one (the next run then uses a new bucket), or pass --volume BUCKET")
    return found


def store_name(family: str, volume: str | None) -> str:
    """--volume, or this user's default bucket for the family."""
    return f"lora-gym-{family}-{user_id()}" if volume is None else bucket_name(volume)


def store_url(name: str) -> str | None:
    """`s3://NAME`, `gs://NAME`, ... from SkyPilot's storage table; None when SkyPilot has no such bucket."""
    import sky
    from sky.data import storage

    for record in sky.get(sky.storage_ls()):
        if record["name"] == name and record["store"]:
            store = storage.StoreType(record["store"][0])
            if store == storage.StoreType.AZURE:  # an Azure URL also names the storage account, not listed here
                raise UserError(f"the bucket {name} is an Azure container: download output/<run>/ from it with "
                                "`az storage blob download-batch`")
            return f"{store.store_prefix()}{name}"
    return None


def pull(record: dict, dest: str) -> int:
    """Download output/<run id>/ from the run's bucket into dest/<run id>/ with SkyPilot's sync command."""
    from sky import cloud_stores

    url = record.get("store_url") or store_url(record["store"])
    if url is None:
        raise UserError(f"SkyPilot lists no bucket {record['store']} (`sky storage ls`): the run has not created "
                        f"it yet, or it was deleted; see `launcher status {record['run_id']}`")
    target = Path(dest) / record["run_id"]
    target.mkdir(parents=True, exist_ok=True)
    # SkyPilot pastes both paths into a bash command unquoted; the bucket name and run id are checked
    # names, and the destination is quoted here.
    command = cloud_stores.get_storage_from_path(url).make_sync_dir_command(
        f"{url}/output/{record['run_id']}", shlex.quote(str(target.resolve())))
    code = _stream(["bash", "-c", command])
    if code != 0:
        raise UserError(f"downloading {url}/output/{record['run_id']} failed (exit code {code}, output above): "
                        "this uses your cloud's CLI (aws, gsutil, ...) and its credentials on this machine")
    if not any(path.is_file() for path in target.rglob("*")):
        raise UserError(f"{url}/output/{record['run_id']} holds no files yet: see `launcher status "
                        f"{record['run_id']}`")
    print(f"{target}: downloaded from {url}/output/{record['run_id']}", file=sys.stderr)
    return 0


def _stream(argv: list[str]) -> int:
    """Run argv, its output passed on to stderr line by line (a download's progress); its exit status."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end="", file=sys.stderr, flush=True)
    return process.returncode
