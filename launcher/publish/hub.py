"""The upload: idempotent and resumable, through huggingface_hub's own client.

- Token: huggingface_hub.get_token() only, i.e. HF_TOKEN or the file `hf auth login` wrote; never printed.
- Idempotent: the repo's current files are read first (HfApi.get_paths_info: an LFS file's sha256, a regular file's
  git blob id) and only files whose content differs go into the commit; nothing differing, no commit at all.
- Resumable: big files go up before the commit (create_commit's preupload: the LFS batch or Xet protocol), and the
  Hub keeps what arrived; a publish run again after an interruption sends only what the Hub does not have.
- `--private` on a repo that already exists public is refused: the files would be public at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from launcher.core.errors import UserError
from launcher.core.inputs import shown
from launcher.publish.bundle import Entry

HINTS = {401: "the Hub refused the token: set HF_TOKEN to a valid write token or run `hf auth login`",
         403: "the token may not write there: use a write token of that user or organisation"}


@dataclass(frozen=True)
class Outcome:
    url: str
    changed: list[Entry]
    commit: str


def check_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import validate_repo_id

    problem = "" if repo_id.count("/") == 1 else "no namespace"
    if not problem:
        try:
            validate_repo_id(repo_id)
        except ValueError as exc:  # HFValidationError
            problem = str(exc).split("\n")[0].rstrip(".")
    if problem:
        raise UserError(f"--repo {shown(repo_id)} is not a Hub model repo id ({problem}): use user/name or "
                        "org/name (letters, digits, '-', '_', '.')")
    return repo_id


def token() -> str:
    from huggingface_hub import get_token

    value = get_token()
    if not value:
        raise UserError("no Hugging Face token: set HF_TOKEN or run `hf auth login` with a write token")
    return value


def _git_blob_id(data: bytes) -> str:
    from huggingface_hub.utils.sha import git_hash  # the blob id paths-info reports for a regular file

    return git_hash(data)


def unchanged(entry: Entry, remote) -> bool:
    """Whether the repo's file (a RepoFile of get_paths_info, or None) already has this entry's content."""
    if remote is None or getattr(remote, "size", None) != entry.size:
        return False
    if getattr(remote, "lfs", None):
        return remote.lfs.sha256 == entry.sha256
    return remote.blob_id == _git_blob_id(entry.read())


def _scrub(text: str, secret: str) -> str:
    from launcher.core.secrets import secret_values

    for value in [secret, *secret_values(os.environ).values()]:
        text = text.replace(value, "***") if value else text
    return " ".join(text.split())


def _failure(exc: Exception, repo_id: str, secret: str) -> UserError:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    what = _scrub(str(exc).split("\n")[0], secret)[:300]
    hint = HINTS.get(status, "run the same publish again: it sends only what the Hub does not have yet")
    return UserError(f"publishing to {repo_id} failed ({status or type(exc).__name__}: {what}): {hint}")


def _remote(api, repo_id: str, paths: list[str]) -> dict:
    return {f.path: f for f in api.get_paths_info(repo_id, paths, repo_type="model")}


def upload(entries: list[Entry], repo_id: str, private: bool, message: str) -> Outcome:
    import httpx
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    secret = token()
    api = HfApi(token=secret)
    try:
        url = str(api.create_repo(repo_id, repo_type="model", private=True if private else None, exist_ok=True))
        info = api.model_info(repo_id)
        if private and not info.private:
            raise UserError(f"{repo_id} exists and is public; --private would publish this run publicly: make it "
                            "private on the Hub (Settings) first, or drop --private")
        remote = _remote(api, repo_id, [e.repo_path for e in entries])
        changed = [e for e in entries if not unchanged(e, remote.get(e.repo_path))]
        if not changed:
            return Outcome(url, [], info.sha)
        operations = [CommitOperationAdd(path_in_repo=e.repo_path, path_or_fileobj=e.source if isinstance(
            e.source, bytes) else str(e.source)) for e in changed]
        commit = api.create_commit(repo_id, operations, commit_message=message, repo_type="model",
                                   parent_commit=info.sha)
        return Outcome(url, changed, commit.oid)
    except (HfHubHTTPError, httpx.HTTPError, OSError, ValueError) as exc:
        raise _failure(exc, repo_id, secret) from None
