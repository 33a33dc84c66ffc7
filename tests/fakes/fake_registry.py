"""A loopback double of a registry that wants a token, as GHCR and Docker Hub do for a public image: the manifest
endpoint answers 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...` until it is sent the token
that the realm hands out anonymously (github.com/distribution/distribution docs/spec/auth/token.md, "How to
authenticate"; the manifest endpoints are the OCI Distribution Spec's, spec.md "Pulling manifests").

FakeRegistry(manifests={("you/img", "1.0"): b"{...}"}) serves them; `.requests` lists (method, path, headers) of
every request, so a test can tell whether anything was asked at all.
"""

from __future__ import annotations

import hashlib
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

TOKEN = "anonymous-pull-token"
# An OCI image manifest, as a registry stores it (its bytes are what the digest is of).
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "size": 2,
                                  "digest": "sha256:" + "4" * 64}, "layers": []}).encode()
SERVICE = "fake-registry"


class FakeRegistry:
    def __init__(self, manifests: dict[tuple[str, str], bytes], *, digest_header: bool = True,
                 token_status: int = 200):
        self.manifests, self.digest_header, self.token_status = manifests, digest_header, token_status
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def digest(self, repository: str, tag: str) -> str:
        return f"sha256:{hashlib.sha256(self.manifests[(repository, tag)]).hexdigest()}"

    def serve_every_host(self, monkeypatch) -> None:
        """Make the launcher ask this double whichever registry a reference names."""
        from launcher.backends import registry_digest

        monkeypatch.setattr(registry_digest, "registry_url", lambda host: self.url)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                registry.requests.append((self.command, self.path, dict(self.headers)))
                url = urlparse(self.path)
                if url.path == "/token":
                    return self._token(parse_qs(url.query))
                parts = url.path.split("/manifests/")
                if len(parts) != 2 or not parts[0].startswith("/v2/"):
                    return self._send(404, b"", body)
                repository, tag = parts[0][len("/v2/"):], parts[1]
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    challenge = (f'Bearer realm="{registry.url}/token",service="{SERVICE}",'
                                 f'scope="repository:{repository}:pull"')
                    return self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', body,
                                      {"WWW-Authenticate": challenge})
                manifest = registry.manifests.get((repository, tag))
                if manifest is None:
                    return self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}', body)
                headers = {"Content-Type": json.loads(manifest).get("mediaType", "application/json")}
                if registry.digest_header:
                    headers["Docker-Content-Digest"] = registry.digest(repository, tag)
                self._send(200, manifest, body, headers)

            def _token(self, query):
                if registry.token_status != 200:
                    return self._send(registry.token_status, b"{}", True)
                # An anonymous token only for the scope the challenge named, as the token spec's server does.
                ok = query.get("service") == [SERVICE] and query.get("scope", [""])[0].startswith("repository:")
                self._send(200 if ok else 400, json.dumps({"token": TOKEN} if ok else {}).encode(), True)

            def _send(self, status: int, payload: bytes, body: bool, headers: dict | None = None):
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                if body:
                    self.wfile.write(payload)

        return Handler


@contextmanager
def serving(monkeypatch, repository: str, tag: str):
    """A double holding one tag, asked by the launcher whichever registry a reference names."""
    registry = FakeRegistry({(repository, tag): MANIFEST})
    registry.serve_every_host(monkeypatch)
    try:
        yield registry
    finally:
        registry.close()
