"""Backends: where a prepared job runs (this machine's Docker/Podman now; Modal and RunPod later).

Every backend gets the same validated Job (the plan `--dry-run` shows) and the same LaunchOptions, and
runs the same pinned image with the same environment contract. Backends are loaded by name only when
used, so `launcher --help` and `run --dry-run` never import an SDK (tests/test_imports.py checks it).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from launcher.core.job import Job

# name -> "module:attribute" of a zero-argument factory (usually the class).
BACKENDS = {
    "local": "launcher.backends.local:LocalBackend",
    "modal": "launcher.backends.modal_backend:ModalBackend",
    "runpod": "launcher.backends.runpod:RunPodBackend",
    "skypilot": "launcher.backends.skypilot_backend:SkyPilotBackend",
}

# name -> (pyproject extra, {module: package}): what a launch on it imports, checked (not imported) before anything
# is printed; a dry run needs none of them.
NEEDS = {"local": ("local", {"docker": "docker"}), "modal": ("modal", {"modal": "modal"}),
         "runpod": ("runpod", {"httpx": "httpx", "boto3": "boto3"}), "skypilot": ("skypilot", {"sky": "skypilot"})}


@dataclass(frozen=True)
class Capabilities:
    name: str
    max_runtime_hours: float | None  # None: no limit imposed by the platform
    detach: bool  # whether a run can continue after the launcher exits


@dataclass(frozen=True)
class LaunchOptions:
    """What the user asked for besides the plan; each backend uses the fields that apply to it."""

    dataset: str
    output: str | None = None
    image: str | None = None  # a tag or digest reference; None: the default image of the preset's family
    gpus: str = "all"  # all | none | comma list of GPU ids
    cache_volume: str | None = None
    run_id: str | None = None  # the run folder's name; None: the entrypoint picks one
    # Cloud backends (Modal, RunPod):
    gpu_type: str | None = None  # the platform's GPU name/id; None: chosen from the preset's GPU class
    follow: bool = False  # stream the logs to the end instead of detaching after the first lines
    max_hours: float | None = None  # None: the preset's resources.time_limit_hours
    max_cost: float | None = None  # USD; refuse to start (or stop) past it
    volume: str | None = None  # RunPod: network volume id to use (else one is created); SkyPilot: the bucket
    spot: bool = False  # SkyPilot: preemptible instances, recovered by the managed job


class Backend(Protocol):
    capabilities: Capabilities

    def check(self, job: Job, options: LaunchOptions) -> None:
        """Every value launch would hand to the engine or platform (image, GPU ids, volume names), checked through
        launcher.core.engine_values without touching either: run calls it before it prints anything."""

    def launch(self, job: Job, options: LaunchOptions) -> int:
        """Run the job to the end, streaming its logs; the run's exit status (130 when interrupted)."""

    def dry_run(self, job: Job, options: LaunchOptions) -> str:
        """What `launch` would do, as text a user can read or paste, without touching anything."""

    def dry_run_data(self, job: Job, options: LaunchOptions) -> dict:
        """The same as data: `run --dry-run --format json` prints it with the plan, as one JSON document."""


class DetachedBackend(Backend, Protocol):
    """A backend whose runs outlive the launcher: the verbs below find them again by their run record
    (launcher/runs.py), from any terminal."""

    def quote(self, job: Job, options: LaunchOptions):
        """The launcher.cost.Quote for this run (GPU, $/h, count), printed and checked before launching."""

    def status(self, record: dict) -> dict:
        """State of every container/pod of the run, with $/h and the cost so far where known."""

    def logs(self, record: dict, follow: bool) -> int:
        """Print the run's logs (to the end with follow); 0, or the run's exit status once it ended."""

    def stop(self, record: dict) -> int:
        """Stop the run now (nothing left billing); 0 when stopped."""

    def pull(self, record: dict, dest: str) -> int:
        """Download the run's output folder (LoRAs, run.json, logs) into dest; 0 when complete."""


def backend_names() -> list[str]:
    return sorted(BACKENDS)


def require_sdk(name: str, purpose: str | None = None) -> None:
    """One `error:` line with the pip command unless the backend's SDK can be imported (launcher/core/extras.py)."""
    from launcher.core import extras

    extra, packages = NEEDS.get(name, ("", {}))  # a backend with no optional package needs nothing
    extras.require(extra, packages, purpose or f"--backend {name}")


def load_backend(name: str) -> Backend:
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)()
