"""A loopback fake of the Hugging Face Hub, for the real huggingface_hub client (endpoint= or HF_ENDPOINT).

It serves a small in-memory repo set ({repo: {path: bytes}}, one fixed 40-hex commit per repo, reachable as
that sha or as "main") on exactly the routes huggingface_hub uses to lock and fetch files:

  HEAD/GET /{repo}/resolve/{revision}/{path}         file bytes; X-Repo-Commit, ETag, X-Linked-Etag/-Size (LFS),
                                                       Range requests (206) for resumed downloads and byte ranges
  GET      /api/models/{repo}[/revision/{revision}]  model_info: sha, siblings (+ size, blobId, lfs with ?blobs=1)
  POST     /api/models/{repo}/paths-info/{revision}  get_paths_info (form field `paths`, repeated)
  GET      /api/models/{repo}/tree/{revision}[/{path}]  list_repo_tree (?recursive=), one page

The write routes (create_repo, preupload, the LFS batch API, commit) are in fake_hub_write.py.

Errors carry the X-Error-Code headers (RepoNotFound, RevisionNotFound, EntryNotFound) that huggingface_hub maps
to its exceptions. Tests can count the body bytes served per file, make a file's content corrupt, or make the
next GET of a file die after N bytes (to exercise resume). Standalone, for container builds:

  python tests/fakes/fake_hub.py --port 8765 --spec spec.json
  spec.json: {"repos": {"owner/name": {"path": "text" | {"base64": "..."} | {"size": N}}}, "token": optional}
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import random
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

try:
    from .fake_hub_write import WriteRoutes, WriteState
except ImportError:  # run as a script (standalone)
    from fake_hub_write import WriteRoutes, WriteState

LFS_SUFFIXES = (".safetensors", ".pth", ".bin", ".model", ".pt", ".gguf")


def commit_for(repo: str) -> str:
    return hashlib.sha1(f"commit:{repo}".encode()).hexdigest()


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


class FakeHub(WriteState):
    def __init__(self, repos: dict[str, dict[str, bytes]], token: str | None = None, lfs=None, port: int = 0,
                 host: str = "127.0.0.1", writable: set[str] | None = None):
        self.repos = {repo: dict(files) for repo, files in repos.items()}
        self.commits = {repo: commit_for(repo) for repo in repos}
        self.token = token  # when set, every request must carry "Authorization: Bearer <token>"
        self.is_lfs = lfs or (lambda path: path.endswith(LFS_SUFFIXES))
        self.served: Counter[str] = Counter()  # "repo:path" -> body bytes sent
        self.requests: list[tuple[str, str, str | None]] = []  # (method, url path, Range header)
        self.corrupt: set[str] = set()  # "repo:path" served with one byte flipped
        self.fail_after: dict[str, int] = {}  # "repo:path" -> the next GET dies after this many bytes
        self._lock = threading.Lock()
        self.init_writes(writable)
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread (the standalone process)."""
        self._server.serve_forever(poll_interval=0.02)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail_once(self, repo: str, path: str, after: int) -> None:
        self.fail_after[f"{repo}:{path}"] = after

    def gets(self, repo: str, path: str) -> list[str | None]:
        """The Range header of every GET of one file, in order (None for a whole-file GET)."""
        suffix = f"/{repo}/resolve/"
        return [rng for method, url, rng in self.requests
                if method == "GET" and url.startswith(suffix) and url.endswith("/" + path)]

    def reset(self) -> None:
        with self._lock:
            self.served.clear()
            self.requests.clear()

    # --- metadata as the Hub reports it ----------------------------------------------------------------------

    def file_json(self, repo: str, path: str, style: str) -> dict:
        content = self.repos[repo][path]
        data = {"size": len(content)}
        if style == "tree":  # tree and paths-info: {"type", "path", "size", "oid", "lfs": {"oid", ...}}
            data |= {"type": "file", "path": path, "oid": git_blob_id(content)}
            lfs_key = "oid"
        else:  # model_info siblings: {"rfilename", "size", "blobId", "lfs": {"sha256", ...}}
            data |= {"rfilename": path, "blobId": git_blob_id(content)}
            lfs_key = "sha256"
        if self.lfs(repo, path):
            data["lfs"] = {lfs_key: hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
        return data

    def oid(self, repo: str, path: str) -> str | None:
        """What the Hub calls a file's oid in preupload: an LFS file's sha256, a regular file's git blob id."""
        content = self.repos[repo].get(path)
        if content is None:
            return None
        return hashlib.sha256(content).hexdigest() if self.lfs(repo, path) else git_blob_id(content)

    def folders(self, repo: str) -> set[str]:
        return {"/".join(p.split("/")[:i]) for p in self.repos[repo] for i in range(1, p.count("/") + 1)}

    def tree(self, repo: str, folder: str, recursive: bool) -> list[dict] | None:
        prefix = f"{folder}/" if folder else ""
        if folder and folder not in self.folders(repo):
            return None

        def listed(path: str) -> bool:
            return path.startswith(prefix) and (recursive or "/" not in path[len(prefix):])

        items = [{"type": "directory", "path": d, "oid": git_blob_id(d.encode())}
                 for d in sorted(self.folders(repo)) if listed(d)]
        return items + [self.file_json(repo, p, "tree") for p in sorted(self.repos[repo]) if listed(p)]


def _handler(hub: FakeHub):
    class Handler(WriteRoutes, BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled client expects
        disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stalls

        def log_message(self, *args) -> None:  # quiet: tests read hub.requests instead
            pass

        @property
        def hub(self) -> FakeHub:
            return hub

        # --- plumbing --------------------------------------------------------------------------------------

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data) -> None:
            self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
            headers = {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "application/json"}
            if commit:
                headers["X-Repo-Commit"] = commit
            self._send(status, json.dumps({"error": message}).encode(), headers)

        def _repo_and_commit(self, repo: str, revision: str) -> str | None:
            """The commit for `revision`, or None after answering with the Hub's error."""
            if repo not in hub.repos:
                self._error(404, "RepoNotFound", f"Repository {repo} not found")
                return None
            if revision not in ("main", hub.commits[repo]):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                return None
            return hub.commits[repo]

        def _route(self) -> None:
            url = urlsplit(self.path)
            with hub._lock:
                hub.requests.append((self.command, unquote(url.path), self.headers.get("Range")))
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if self.command == "PUT" and len(parts) == 2 and parts[0] == "__lfs":  # presigned: no token needed
                return self.lfs_put(parts[1])
            if hub.token and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, "", "Invalid credentials in Authorization header")
            query = parse_qs(url.query)
            if self.command == "POST" and parts in (["api", "repos", "create"], ["api", "validate-yaml"]):
                return self.create_repo() if parts[1] == "repos" else self.validate_yaml()
            if self.command == "POST" and len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == [
                    "info", "lfs", "objects", "batch"]:
                return self.lfs_batch(f"{parts[0]}/{parts[1].removesuffix('.git')}")
            if len(parts) >= 5 and parts[2] == "resolve" and self.command in ("GET", "HEAD"):
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            if len(parts) >= 4 and parts[:2] == ["api", "models"]:
                return self._api(f"{parts[2]}/{parts[3]}", parts[4:], query)
            self._error(404, "", f"no route for {self.command} {url.path}")

        do_GET = do_HEAD = do_POST = do_PUT = _route

        # --- routes ----------------------------------------------------------------------------------------

        def _api(self, repo: str, rest: list[str], query: dict) -> None:
            if self.command == "GET" and (not rest or (len(rest) == 2 and rest[0] == "revision")):
                commit = self._repo_and_commit(repo, rest[1] if rest else "main")
                if commit:
                    blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
                    siblings = [hub.file_json(repo, p, "sibling") if blobs else {"rfilename": p}
                                for p in sorted(hub.repos[repo])]
                    self._json({"id": repo, "modelId": repo, "sha": commit, "private": hub.private.get(repo, False),
                                "siblings": siblings})
            elif self.command == "POST" and len(rest) == 2 and rest[0] in ("preupload", "commit"):
                if repo not in hub.repos:
                    return self._error(404, "RepoNotFound", f"Repository {repo} not found")
                return self.preupload(repo) if rest[0] == "preupload" else self.create_commit(repo, rest[1])
            elif self.command == "POST" and len(rest) == 2 and rest[0] == "paths-info":
                if self._repo_and_commit(repo, rest[1]):
                    length = int(self.headers.get("Content-Length") or 0)
                    paths = parse_qs(self.rfile.read(length).decode()).get("paths", [])
                    folders = hub.folders(repo)
                    self._json([hub.file_json(repo, p, "tree") if p in hub.repos[repo] else
                                {"type": "directory", "path": p, "oid": git_blob_id(p.encode())}
                                for p in paths if p in hub.repos[repo] or p in folders])
            elif self.command == "GET" and len(rest) >= 2 and rest[0] == "tree":
                commit = self._repo_and_commit(repo, rest[1])
                if commit:
                    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                    items = hub.tree(repo, "/".join(rest[2:]), recursive)
                    if items is None:
                        return self._error(404, "EntryNotFound", f"{'/'.join(rest[2:])} does not exist", commit)
                    self._json(items)
            else:
                self._error(404, "", f"no route for {self.command} {self.path}")

        def _resolve(self, repo: str, revision: str, path: str) -> None:
            commit = self._repo_and_commit(repo, revision)
            if not commit:
                return
            if path not in hub.repos[repo]:
                return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}", commit)
            key, content = f"{repo}:{path}", hub.repos[repo][path]
            headers = {"X-Repo-Commit": commit, "Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
            if hub.lfs(repo, path):
                sha = hashlib.sha256(content).hexdigest()
                headers |= {"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": len(content)}
            else:
                headers["ETag"] = f'"{git_blob_id(content)}"'
            if self.command == "HEAD":
                return self._send(200, content, headers)  # Content-Length of the whole file, no body
            if key in hub.corrupt:
                content = bytes([content[0] ^ 0xFF]) + content[1:]
            wanted = self._range(len(content))
            if wanted is None:
                return self._send(416, b"", {"Content-Range": f"bytes */{len(content)}"})
            start, end = wanted
            status = 200
            if start or self.headers.get("Range"):
                status, headers["Content-Range"] = 206, f"bytes {start}-{end - 1}/{len(content)}"
            self._stream(key, status, content[start:end], headers)

        def _range(self, size: int) -> tuple[int, int] | None:
            """[start, end) asked for: "bytes=N-" (huggingface_hub resuming) or "bytes=N-M" (image layers)."""
            spec = self.headers.get("Range")
            if not spec:
                return 0, size
            first, _, last = spec.removeprefix("bytes=").partition("-")
            start, end = int(first), min(size, int(last) + 1) if last else size
            return (start, end) if start < size and start < end else None

        def _stream(self, key: str, status: int, body: bytes, headers: dict) -> None:
            with hub._lock:
                cut = hub.fail_after.pop(key, None)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            sent = body if cut is None else body[:cut]
            with hub._lock:  # counted before sending: a client that got every byte may check at once
                hub.served[key] += len(sent)
            self.wfile.write(sent)
            self.wfile.flush()
            if cut is not None:  # die mid-body: the client sees a short read, as on a dropped connection
                self.close_connection = True

    return Handler


# --- standalone --------------------------------------------------------------------------------------------

def _content(value) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if "base64" in value:
        return base64.b64decode(value["base64"])
    return random.Random(value.get("seed", 0)).randbytes(int(value["size"]))


def load_spec(path: str | Path) -> tuple[dict[str, dict[str, bytes]], str | None]:
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    repos = {repo: {p: _content(v) for p, v in files.items()} for repo, files in spec["repos"].items()}
    return repos, spec.get("token")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a fake Hugging Face Hub on loopback.")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--spec", required=True, help="JSON: {\"repos\": {repo: {path: content}}, \"token\": ...}")
    args = parser.parse_args(argv)
    repos, token = load_spec(args.spec)
    hub = FakeHub(repos, token=token, port=args.port, host=args.host)
    print(f"fake hub listening on {hub.url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        hub.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
