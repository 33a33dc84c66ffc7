"""A cloud image's tag resolved to its manifest digest, asked of the registry itself, so a run launches (and
run.json and the run registry record) exactly one image: `NAME:TAG@sha256:...`.

The protocol is the OCI Distribution Spec's (github.com/opencontainers/distribution-spec, spec.md, "Pulling
manifests"; Docker's Registry HTTP API v2 before it): `HEAD /v2/<name>/manifests/<tag>` with an Accept of the
manifest media types answers with the `Docker-Content-Digest` header; without it, the digest is the sha256 of the
manifest's bytes as a GET returns them. A registry that wants a token answers 401 with
`WWW-Authenticate: Bearer realm=...,service=...,scope=...`, and for a public image an anonymous GET of the realm
with that service and scope returns `{"token": ...}` (github.com/distribution/distribution, docs/spec/auth/token.md;
GHCR and Docker Hub both work this way). No credential is ever sent: a private image is left unresolved.

Only a launch calls this (launcher/cli/run_cmd.py, sweep_cmd.py); a dry run stays off the network.

Each platform pulls a digest reference as such: Modal builds `FROM <reference>` (modal 1.6.4, modal/_image.py
`from_registry`), and a Dockerfile's FROM takes `NAME[:TAG]@DIGEST`; SkyPilot runs `docker pull` of `image_id`
on the machine (sky/provision/docker_utils.py); RunPod's CreatePodRequest `image` is a plain string its host
pulls (ContainerConfig in api-reference-v2/openapi.json, github.com/runpod/docs), and its docs name no limit on
the form. Docker's reference grammar allows a tag before the digest (github.com/distribution/reference,
reference.go: `name [":" tag] ["@" digest]`); the digest decides what is pulled, and the tag stays for the
launcher's own reading of the flavor (labels.image_tag).
"""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import replace

from launcher.backends import LaunchOptions, labels
from launcher.core.provenance import IMAGE_ID, PINNED_REF

# The manifest kinds a LoRA Gym image may be stored as: an OCI image index or manifest (podman and buildx push
# these), or Docker's manifest list or schema 2 manifest (docker push).
MANIFEST_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.list.v2+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
TIMEOUT_S = 10.0  # a registry answers a HEAD in well under a second; a launch must not hang on a slow one
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"  # Docker Hub's registry API host (`docker.io` names it in references)
# Docker treats these as plain-HTTP registries without being told (--insecure-registry's default, 127.0.0.0/8).
LOOPBACK = ("localhost", "127.0.0.1", "[::1]")


class DigestError(Exception):
    """Why a tag could not be resolved (a private image, no network, a registry error), in a few words."""


def repository_and_tag(ref: str) -> tuple[str, str, str]:
    """(registry host, repository path, tag) of a reference without a digest, per Docker's reference grammar:
    a bare name is Docker Hub's `library/NAME`, `user/name` is Docker Hub's, and the tag defaults to latest."""
    name, tag = ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, "latest")
    host = labels.registry_of(name) or DOCKER_HUB
    path = name.split("/", 1)[1] if name.split("/", 1)[0] == host else name
    if host == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    return host, path, tag


def registry_url(host: str) -> str:
    """Where a registry's API answers."""
    if host in (DOCKER_HUB, "index.docker.io"):
        return f"https://{DOCKER_HUB_API}"
    scheme = "http" if host.rsplit(":", 1)[0] in LOOPBACK else "https"
    return f"{scheme}://{host}"


def bearer_challenge(header: str) -> dict[str, str]:
    """The parameters of `WWW-Authenticate: Bearer realm="...",service="...",scope="..."` (token.md)."""
    if not header.lower().startswith("bearer "):
        raise DigestError("the registry asks for credentials (a private image?)")
    params = dict(re.findall(r'(\w+)="([^"]*)"', header))
    if "realm" not in params:
        raise DigestError("the registry's token challenge names no realm")
    return params


def anonymous_token(client, challenge: str) -> str:
    """A pull token for no one in particular, as `docker pull` gets one for a public image."""
    params = bearer_challenge(challenge)
    query = {key: params[key] for key in ("service", "scope") if key in params}
    response = client.get(params["realm"], params=query)
    if response.status_code != 200:
        raise DigestError(f"its token service answered HTTP {response.status_code} (a private image?)")
    body = response.json()
    token = body.get("token") or body.get("access_token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise DigestError("its token service returned no token")
    return token


def manifest_digest(ref: str) -> str:
    """`sha256:...` of the manifest `ref`'s tag names now, from its registry; DigestError when it cannot tell."""
    import httpx

    host, path, tag = repository_and_tag(ref)
    url = f"{registry_url(host)}/v2/{path}/manifests/{tag}"
    headers = {"Accept": ", ".join(MANIFEST_TYPES)}
    try:
        with httpx.Client(timeout=TIMEOUT_S, follow_redirects=True) as client:
            response = client.head(url, headers=headers)
            if response.status_code == 401:
                token = anonymous_token(client, response.headers.get("www-authenticate", ""))
                headers["Authorization"] = f"Bearer {token}"
                response = client.head(url, headers=headers)
            if response.status_code != 200:
                raise DigestError(f"{host} answered HTTP {response.status_code} for {path}:{tag}"
                                  + (" (a private image?)" if response.status_code in (401, 403) else ""))
            digest = response.headers.get("docker-content-digest")
            if not digest:  # the header is optional: the digest of the bytes is the manifest's digest
                body = client.get(url, headers=headers)
                body.raise_for_status()
                digest = f"sha256:{hashlib.sha256(body.content).hexdigest()}"
    except httpx.HTTPError as error:
        raise DigestError(f"{host} could not be reached ({type(error).__name__})") from None
    except ValueError:  # a token answer that is not JSON
        raise DigestError("its token service answered something other than JSON") from None
    if not IMAGE_ID.fullmatch(digest):
        raise DigestError(f"{host} gave a digest that is not sha256:<64 hex>")
    return digest


def pinned(options: LaunchOptions, family: str) -> LaunchOptions:
    """The options with the image pinned to the digest its tag names now, said in one line; as given (and one
    note) when it is pinned already or cannot be resolved, so run.json records it `unresolved`."""
    ref = options.image or labels.default_image(family)
    if PINNED_REF.search(ref):
        return options
    try:
        digest = manifest_digest(ref)
    except DigestError as why:
        name = ref.rsplit(":", 1)[0] if ":" in ref.rsplit("/", 1)[-1] else ref
        print(f"note: the image {ref} was not resolved to a digest ({why}), so the run records its tag only: "
              f"pass --image {name}@sha256:... to pin it", file=sys.stderr)
        return options
    print(f"image: {ref} is {digest}: launching {ref}@{digest}", file=sys.stderr)
    return replace(options, image=f"{ref}@{digest}")
