"""The write side of the fake Hugging Face Hub (tests/fakes/fake_hub.py): the routes huggingface_hub's HfApi uses
to create a repo and commit files over the classic (non-Xet) protocol; tests set HF_HUB_DISABLE_XET=1, which
makes the client take that path (huggingface_hub 2.4 _commit_api._upload_files: Xet only when available).

  POST /api/repos/create                        create_repo: {name, organization, visibility|private}; 409 + url
                                                  when it exists; a new repo holds .gitattributes in one commit
  POST /api/validate-yaml                       create_commit's README check: {content} -> errors when the YAML
                                                  front matter does not parse
  POST /api/models/{repo}/preupload/{rev}       {files: [{path, sample, size}]} -> uploadMode "lfs" (LFS suffix,
                                                  binary sample or over 10 MB) or "regular", and the current oid
  POST /{repo}.git/info/lfs/objects/batch        git LFS batch API (basic transfer): objects the store already has
                                                  come back without actions, so a second upload sends nothing
  PUT  /__lfs/{oid}                             the upload href (like a presigned URL: no Authorization needed);
                                                  the body's sha256 must be the oid
  POST /api/models/{repo}/commit/{rev}          ndjson: header (summary, parentCommit -> 412 when stale), file
                                                  (base64), lfsFile (oid must be in the store), deletedFile

State a test can read: hub.commit_log (one dict per commit: repo, oid, summary, paths), hub.lfs_puts (oid ->
PUTs), hub.validated (README texts checked). hub.fail_next_commit makes the next commit answer 500 once.
"""

from __future__ import annotations

import base64
import hashlib
import json

import yaml

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
REGULAR_LIMIT = 10 * 1024 * 1024  # the Hub takes bigger files through LFS only


def new_commit(previous: str, change: object) -> str:
    return hashlib.sha1(f"{previous}:{json.dumps(change, sort_keys=True)}".encode()).hexdigest()


class WriteState:
    """Mixed into FakeHub: what the write routes keep."""

    def init_writes(self, writable: set[str] | None) -> None:
        self.writable = writable  # namespaces the token may write to; None: any
        self.private: dict[str, bool] = {}
        self.lfs_store: dict[str, bytes] = {}  # sha256 -> content
        self.lfs_paths: dict[str, set[str]] = {}  # repo -> paths committed as LFS files
        self.lfs_puts: dict[str, int] = {}
        self.commit_log: list[dict] = []
        self.validated: list[str] = []
        self.fail_next_commit = False

    def lfs(self, repo: str, path: str) -> bool:
        return path in self.lfs_paths.get(repo, set()) or self.is_lfs(path)

    def may_write(self, repo: str) -> bool:
        return self.writable is None or repo.split("/")[0] in self.writable

    def commit(self, repo: str, summary: str, regular: dict[str, bytes], lfs: dict[str, bytes],
               deleted: list[str]) -> str:
        files = self.repos.setdefault(repo, {})
        for path in deleted:
            files.pop(path, None)
            self.lfs_paths.get(repo, set()).discard(path)
        files |= regular | lfs
        self.lfs_paths.setdefault(repo, set()).update(lfs)
        self.lfs_paths[repo] -= set(regular)
        oid = new_commit(self.commits.get(repo, ""), [summary, sorted(regular), sorted(lfs), deleted])
        self.commits[repo] = oid
        self.commit_log.append({"repo": repo, "oid": oid, "summary": summary,
                                "paths": sorted([*regular, *lfs, *deleted])})
        return oid


class WriteRoutes:
    """Mixed into the request handler; `hub` is the FakeHub."""

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forbidden(self, repo: str) -> bool:
        if self.hub.may_write(repo):
            return False
        self._error(403, "", f"You don't have the rights to write to {repo}")
        return True

    def create_repo(self) -> None:
        body = json.loads(self._body())
        repo = f"{body.get('organization') or 'user'}/{body['name']}"
        if self._forbidden(repo):
            return
        url = f"{self.hub.url}/{repo}"
        if repo in self.hub.repos:
            return self._send(409, json.dumps({"error": "You already created this model repo", "url": url}).encode(),
                              {"Content-Type": "application/json"})
        self.hub.private[repo] = body.get("visibility") == "private" or bool(body.get("private"))
        self.hub.commit(repo, "initial commit", {".gitattributes": GITATTRIBUTES}, {}, [])
        self._json({"url": url, "name": repo})

    def validate_yaml(self) -> None:
        content = json.loads(self._body())["content"]
        self.hub.validated.append(content)
        head = content.split("---\n", 2)
        try:
            ok = content.startswith("---\n") and isinstance(yaml.safe_load(head[1]), dict)
        except (yaml.YAMLError, IndexError):
            ok = False
        if not ok:
            return self._send(400, json.dumps({"errors": [{"message": "invalid YAML front matter"}]}).encode(),
                              {"Content-Type": "application/json"})
        self._json({"errors": [], "warnings": []})

    def preupload(self, repo: str) -> None:
        if self._forbidden(repo):
            return
        files = []
        for item in json.loads(self._body())["files"]:
            binary = b"\0" in base64.b64decode(item["sample"])
            lfs = self.hub.is_lfs(item["path"]) or binary or item["size"] > REGULAR_LIMIT
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": self.hub.oid(repo, item["path"])})
        self._json({"files": files, "commitOid": self.hub.commits[repo]})

    def lfs_batch(self, repo: str) -> None:
        if self._forbidden(repo):
            return
        objects = []
        for item in json.loads(self._body())["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.hub.lfs_store:
                entry |= {"authenticated": True, "actions": {"upload": {"href": f"{self.hub.url}/__lfs/{item['oid']}"}}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects})

    def lfs_put(self, oid: str) -> None:
        data = self._body()
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "", "content does not match the oid")
        with self.hub._lock:
            self.hub.lfs_store[oid] = data
            self.hub.lfs_puts[oid] = self.hub.lfs_puts.get(oid, 0) + 1
        self._send(200)

    def _operations(self, lines: list[dict]) -> tuple[dict, dict, list] | str:
        regular, lfs, deleted = {}, {}, []
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                regular[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                content = self.hub.lfs_store.get(value["oid"])
                if content is None or len(content) != value.get("size", len(content)):
                    return f"LFS object {value['oid']} of {value['path']} was never uploaded"
                lfs[value["path"]] = content
            elif line["key"] == "deletedFile":
                deleted.append(value["path"])
            else:
                return f"unknown commit operation {line['key']}"
        return regular, lfs, deleted

    def create_commit(self, repo: str, revision: str) -> None:
        if self._forbidden(repo) or not self._repo_and_commit(repo, revision):
            return
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        header = lines[0]["value"]
        if self.hub.fail_next_commit:
            self.hub.fail_next_commit = False
            return self._error(500, "", "Internal Error - We're working hard to fix this as soon as possible!")
        if header.get("parentCommit") not in (None, self.hub.commits[repo]):
            return self._error(412, "", "A commit has happened since. Please refresh and try again.")
        operations = self._operations(lines)
        if isinstance(operations, str):
            return self._error(422, "", operations)
        oid = self.hub.commit(repo, header["summary"], *operations)
        self._json({"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{repo}/commit/{oid}",
                    "hookOutput": ""})
