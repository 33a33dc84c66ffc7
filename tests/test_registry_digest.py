"""A cloud image's tag resolved to its manifest digest at launch (launcher/backends/registry_digest.py): against a
real registry (Debian's docker-registry, the CNCF distribution server, with an image podman pushed to it) and a
loopback double of the token challenge GHCR and Docker Hub answer with (tests/fakes/fake_registry.py)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import container_support
import pytest
from conftest import EXAMPLE_DATASET
from fakes.fake_registry import TOKEN, serving

from launcher.backends import LaunchOptions, registry_digest
from launcher.backends.registry_digest import DigestError, manifest_digest, registry_url  # the real one (conftest)
from launcher.cli.main import main


@pytest.fixture
def double(monkeypatch):
    """The double standing in for every registry host (ghcr.io here)."""
    with serving(monkeypatch, "you/lora-gym-wan22", "0.1.0") as registry:
        yield registry


@pytest.mark.parametrize(("ref", "parts", "url"), [
    ("lora-gym-wan22:0.1.0", ("docker.io", "library/lora-gym-wan22", "0.1.0"), "https://registry-1.docker.io"),
    ("you/lora-gym-wan22", ("docker.io", "you/lora-gym-wan22", "latest"), "https://registry-1.docker.io"),
    ("docker.io/ubuntu:24.04", ("docker.io", "library/ubuntu", "24.04"), "https://registry-1.docker.io"),
    ("ghcr.io/you/sub/img:1.0-slim", ("ghcr.io", "you/sub/img", "1.0-slim"), "https://ghcr.io"),
    ("127.0.0.1:5000/tiny:1", ("127.0.0.1:5000", "tiny", "1"), "http://127.0.0.1:5000"),
])
def test_a_reference_names_its_registry_repository_and_tag(ref, parts, url):
    assert registry_digest.repository_and_tag(ref) == parts
    assert registry_url(parts[0]) == url


def test_the_token_challenge_is_answered_anonymously_and_the_digest_read(double):
    assert manifest_digest("ghcr.io/you/lora-gym-wan22:0.1.0") == double.digest("you/lora-gym-wan22", "0.1.0")
    (first, token, pinned) = double.requests
    assert (first[0], first[1]) == ("HEAD", "/v2/you/lora-gym-wan22/manifests/0.1.0")
    assert "Authorization" not in first[2] and "Authorization" not in token[2]  # nothing but the anonymous token
    assert token[1] == "/token?service=fake-registry&scope=repository%3Ayou%2Flora-gym-wan22%3Apull"
    assert pinned[0] == "HEAD" and pinned[2]["Authorization"] == f"Bearer {TOKEN}"
    assert all(kind in pinned[2]["Accept"] for kind in registry_digest.MANIFEST_TYPES)


def test_without_the_digest_header_the_manifest_bytes_are_hashed(double):
    double.digest_header = False
    assert manifest_digest("ghcr.io/you/lora-gym-wan22:0.1.0") == double.digest("you/lora-gym-wan22", "0.1.0")
    assert double.requests[-1][0] == "GET"


@pytest.mark.parametrize(("ref", "token_status", "why"), [
    ("ghcr.io/you/lora-gym-wan22:9.9.9", 200, "answered HTTP 404 for you/lora-gym-wan22:9.9.9"),
    ("ghcr.io/you/lora-gym-wan22:0.1.0", 403, "token service answered HTTP 403 (a private image?)"),
])
def test_an_unknown_tag_or_a_refused_token_is_a_reason(double, ref, token_status, why):
    double.token_status = token_status
    with pytest.raises(DigestError, match=why.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        manifest_digest(ref)


def test_an_unreachable_registry_is_a_reason(monkeypatch):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setattr(registry_digest, "registry_url", lambda host: f"http://127.0.0.1:{port}")
    with pytest.raises(DigestError, match="could not be reached"):
        manifest_digest("ghcr.io/you/lora-gym-wan22:0.1.0")


def test_pinned_says_the_digest_in_one_line_and_pins_the_tag(double, capsys):
    options = LaunchOptions(dataset="d", image="ghcr.io/you/lora-gym-wan22:0.1.0")
    digest = double.digest("you/lora-gym-wan22", "0.1.0")
    assert registry_digest.pinned(options, "wan22").image == f"ghcr.io/you/lora-gym-wan22:0.1.0@{digest}"
    assert capsys.readouterr().err.splitlines() == [
        f"image: ghcr.io/you/lora-gym-wan22:0.1.0 is {digest}: launching ghcr.io/you/lora-gym-wan22:0.1.0@{digest}"]


def test_an_unresolved_tag_launches_as_given_with_one_note(double, capsys):
    options = LaunchOptions(dataset="d", image="ghcr.io/you/private:1.0")
    assert registry_digest.pinned(options, "wan22") is options
    [note] = capsys.readouterr().err.splitlines()
    assert note.startswith("note: the image ghcr.io/you/private:1.0 was not resolved to a digest (")
    assert note.endswith("pass --image ghcr.io/you/private@sha256:... to pin it")


def test_a_pinned_reference_asks_nothing(double, capsys):
    options = LaunchOptions(dataset="d", image="ghcr.io/you/x@sha256:" + "a" * 64)
    assert registry_digest.pinned(options, "wan22") is options
    assert double.requests == [] and capsys.readouterr().err == ""


@pytest.mark.parametrize("backend", ["modal", "runpod", "skypilot"])
def test_a_dry_run_asks_no_registry(double, capsys, backend):
    assert main(["run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", str(EXAMPLE_DATASET),
                 "--backend", backend, "--dry-run", "--image", "ghcr.io/you/lora-gym-wan22:0.1.0"]) == 0
    out = capsys.readouterr()
    assert double.requests == [] and "ghcr.io/you/lora-gym-wan22:0.1.0" in out.out
    assert "@sha256:" not in out.out + out.err


# --- a real registry ---------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def real_registry(tmp_path):
    """Debian's docker-registry (github.com/distribution/distribution) on a loopback port, storing in tmp_path."""
    binary = shutil.which("docker-registry")
    if binary is None:
        pytest.skip("docker-registry is not installed (apt-get install -y docker-registry; .ci/run installs it)")
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "
                      f"{tmp_path / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    server = subprocess.Popen([binary, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and server.poll() is None:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        else:
            pytest.fail(f"docker-registry did not listen on {port}: {server.stderr.read().decode()[-500:]}")
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def podman(*argv: str) -> None:
    done = subprocess.run(["podman", *argv], capture_output=True, text=True)
    assert done.returncode == 0, f"podman {argv[0]}: {done.stderr[-1000:]}"


def test_a_tag_pushed_to_a_real_registry_resolves_to_the_digest_podman_pushed(real_registry, tmp_path):
    container_support.require_podman()
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "hello.txt").write_text(container_support.RUN)
    (tmp_path / "ctx" / "Containerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    name = container_support.run_name("digest")
    remote, digest_file = f"{real_registry}/{name}:1", tmp_path / "digest"
    try:
        podman("build", "-q", "-t", f"localhost/{name}:1", str(tmp_path / "ctx"))
        podman("push", "--tls-verify=false", "--digestfile", str(digest_file), f"localhost/{name}:1",
               f"docker://{remote}")
        pushed = digest_file.read_text().strip()
        assert manifest_digest(remote) == pushed
        # What a launch hands the platform, `NAME:TAG@sha256:...`, is pulled by an engine as that very image.
        podman("pull", "-q", "--tls-verify=false", f"{remote}@{pushed}")
    finally:  # the image pulled by digest has no tag, so it is removed by that digest
        if digest_file.is_file():
            subprocess.run(["podman", "rmi", "-f", "-i", f"{remote}@{digest_file.read_text().strip()}"],
                           capture_output=True)
        container_support.remove_named(name)
    with pytest.raises(DigestError, match="HTTP 404"):  # a tag never pushed
        manifest_digest(f"{real_registry}/{name}:2")
