"""Shared fixtures. Secrets are scrubbed from the environment of every test and every subprocess."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import container_support
import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "fakes"
EXAMPLE_DATASET = ROOT / "examples" / "dataset"
SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GEMINI_API_KEY", "REPLICATE_API_TOKEN", "RUNPOD_API_KEY",
               "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
               "SKYPILOT_DOCKER_PASSWORD")


def pytest_terminal_summary(terminalreporter, config):
    """The random order's seed, under -q too (pytest-randomly prints it in the header, which -q hides)."""
    if config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"test order: --randomly-seed={config.getoption('randomly_seed')} "
                                    "repeats it, -p no:randomly runs the files in order")


@pytest.fixture(scope="session", autouse=True)
def _no_container_leftovers():
    """After every other fixture: nothing of this run may be left in Podman (tests/container_support.py)."""
    yield
    if container_support.USED and (left := container_support.remove_named(container_support.RUN)):
        pytest.fail(f"container tests left {len(left)} things behind (now removed): {', '.join(left)}")


@pytest.fixture(autouse=True)
def _private_state(monkeypatch, tmp_path_factory):
    """The launcher's state folder (run registry, cached catalogs) is the test's own, never the user's."""
    monkeypatch.setenv("LORA_GYM_HOME", str(tmp_path_factory.mktemp("lora-gym-home")))


@pytest.fixture(autouse=True)
def _no_registry_lookups(monkeypatch):
    """A cloud launch asks the image's registry for its digest (launcher/backends/registry_digest.py): in tests a
    remote registry is a loopback port nothing listens on (so unresolved, at once), unless a test points it at a
    double; a loopback registry (tests/test_registry_digest.py's real one) is asked as it is."""
    from launcher.backends import registry_digest

    real = registry_digest.registry_url
    monkeypatch.setattr(registry_digest, "registry_url", lambda host: real(host) if host.startswith("127.0.0.1:")
                        else "http://127.0.0.1:9")


@pytest.fixture(autouse=True)
def _scrub_secrets(monkeypatch):
    for name in SECRET_VARS:
        monkeypatch.delenv(name, raising=False)


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without secrets or LORA_GYM_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items()
           if k not in SECRET_VARS and (not k.startswith("LORA_GYM_") or k == "LORA_GYM_HOME")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


@pytest.fixture(scope="module")
def s3_url():
    """A loopback S3 server (moto's), one per test module: RunPod's volume API stands on it (RunPod, sweeps, MCP)."""
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A private copy of the example dataset (4 images, 2 videos, captions) that a test may change."""
    target = tmp_path / "dataset"
    shutil.copytree(EXAMPLE_DATASET, target)
    return target
