"""The local backend: run the pinned image on this machine with Docker Engine or Podman (docker-py).

The container is described once as data (ContainerSpec); `--dry-run` renders it as a plain `docker run`
command and `launch` turns it into docker-py arguments, so the printed command is what actually runs.
docker-py is imported only inside the functions that talk to the engine: `run --dry-run --backend local`
works without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from launcher import runs
from launcher.backends import Capabilities, LaunchOptions, labels, local_runs
from launcher.backends.local_gpus import gpu_requests, host_gpu_count, parse_gpus
from launcher.core.engine_values import docker_volume, image_reference
from launcher.core.errors import UserError
from launcher.core.inputs import creatable_dir
from launcher.core.job import DEFAULT_PATHS, Job

PRESETS_DIR = "/presets"
# PyTorch data-loader workers pass batches through /dev/shm; Docker's 64 MB default makes them crash.
SHM_SIZE = "8g"
STOP_TIMEOUT_S = 30  # SIGTERM, then this long for the entrypoint to stop its step, then SIGKILL
LOG_DRAIN_S = 10  # after the container stopped, how long its last log lines may take to arrive
UNREACHABLE = "cannot reach Docker or Podman"
PODMAN_SOCKET_FIX = ("start Docker, or Podman's Docker API with `podman system service --time=0 "
                     "unix:///run/podman/podman.sock &` and `export DOCKER_HOST=unix:///run/podman/podman.sock`")


@dataclass(frozen=True)
class Mount:
    source: str  # an absolute host path, or a volume name
    target: str
    read_only: bool = False

    @property
    def bind(self) -> str:
        """The `-v` form; docker-py's `volumes` takes the same string, so both paths mount alike."""
        return f"{self.source}:{self.target}:{'ro' if self.read_only else 'rw'}"


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    env: dict[str, str]
    mounts: tuple[Mount, ...]
    user: str | None
    gpus: tuple[str, ...] | str | None  # "all", GPU ids, or None for no GPU
    labels: dict[str, str] = field(default_factory=dict)
    shm_size: str = SHM_SIZE


# --- the container as data -------------------------------------------------------------------------------

def _host_path(path: str | Path) -> str:
    resolved = str(Path(path).expanduser().resolve())
    if ":" in resolved:  # `-v` splits on ':'; refuse rather than mount the wrong thing
        raise UserError(f"{resolved} contains ':', which Docker cannot mount: use a path without ':'")
    return resolved


def output_dir(options: LaunchOptions) -> str:
    if not options.output:
        raise UserError("--backend local needs --output DIR: the folder on this machine where each run's "
                        "LoRAs and run.json are written")
    path = _host_path(options.output)
    creatable_dir(Path(path), "--output")
    return path


def cache_volume(options: LaunchOptions, family: str) -> str:
    return docker_volume(options.cache_volume or f"lora-gym-cache-{family}")


def _preset(origin: str) -> tuple[str, Mount | None]:
    """LORA_GYM_PRESET, and the read-only mount of a user preset file (registry names need none)."""
    if not Path(origin).is_file():
        return origin, None
    target = f"{PRESETS_DIR}/{Path(origin).stem}.toml"
    return target, Mount(_host_path(origin), target, read_only=True)


def _user() -> str | None:
    # The container runs as the invoking user so the LoRAs it writes belong to them (no getuid on Windows).
    return f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None


def container_spec(job: Job, options: LaunchOptions, user: str | None = None) -> ContainerSpec:
    """Everything `docker run` needs, from the validated job; no Docker involved."""
    family, paths = job.loaded.preset.family, DEFAULT_PATHS
    preset_env, preset_mount = _preset(job.loaded.origin)
    # Only the contract's variables go in: nothing from the host environment, so no secret leaks in.
    image = image_reference(options.image) if options.image is not None else labels.default_image(family)
    env = {"LORA_GYM_PRESET": preset_env, "LORA_GYM_IMAGE": image}  # run.json records it (launch adds its id)
    if job.plan.expert:
        env["LORA_GYM_EXPERT"] = job.plan.expert
    if job.loaded.overrides:
        env["LORA_GYM_SET"] = shlex.join(job.loaded.overrides)
    if options.run_id:
        env["LORA_GYM_RUN_ID"] = options.run_id
    # Explicit, so an image that changes a default still sees the folders mounted below.
    env |= {"LORA_GYM_DATASET_DIR": paths.dataset, "LORA_GYM_OUTPUT_DIR": paths.output,
            "LORA_GYM_CACHE_DIR": paths.cache}
    mounts = [Mount(_host_path(options.dataset), paths.dataset, read_only=True),
              Mount(output_dir(options), paths.output),
              Mount(cache_volume(options, family), paths.cache)]
    mounts += [preset_mount] if preset_mount else []
    gpus = parse_gpus(options.gpus)
    need = job.plan.resources.gpu_count
    if need > 1 and (gpus is None or (gpus != "all" and len(gpus) < need)):
        raise UserError(f"the run trains on {need} GPUs (resources.gpus) and --gpu-ids {options.gpus} gives "
                        f"{0 if gpus is None else len(gpus)}: pass --gpu-ids all or {need} GPU ids")
    return ContainerSpec(image=image, env=env, mounts=tuple(mounts),
                         user=user if user is not None else _user(), gpus=gpus,
                         labels={labels.LAUNCHED_BY: "launcher"})


def docker_run_argv(spec: ContainerSpec) -> list[str]:
    """The plain `docker run` equivalent: the image's entrypoint, no command."""
    argv = ["docker", "run", "--rm"]
    argv += ["--user", spec.user] if spec.user else []
    if spec.gpus == "all":
        argv += ["--gpus", "all"]
    elif spec.gpus:
        argv += ["--gpus", f'"device={",".join(spec.gpus)}"']  # the CLI needs the quotes for a list
    argv += ["--shm-size", spec.shm_size]
    for key, value in spec.labels.items():
        argv += ["--label", f"{key}={value}"]
    for key, value in spec.env.items():
        argv += ["-e", f"{key}={value}"]
    for mount in spec.mounts:
        argv += ["-v", mount.bind]
    return argv + [spec.image]


def render_command(argv: list[str]) -> str:
    """One shell command, one option per line, continued with backslashes."""
    words = [shlex.quote(a) for a in argv]
    lines, i = [" ".join(words[:3])], 3
    while i < len(words) - 1:
        takes_value = words[i].startswith("-") and i + 1 < len(words) - 1
        lines.append(" ".join(words[i:i + 2]) if takes_value else words[i])
        i += 2 if takes_value else 1
    lines.append(words[-1])
    return " \\\n    ".join(lines)


def run_kwargs(spec: ContainerSpec, device_requests: list[dict]) -> dict:
    """docker-py `containers.create` arguments for the spec (no command: the entrypoint runs as built)."""
    return {"image": spec.image, "environment": dict(spec.env), "volumes": [m.bind for m in spec.mounts],
            "user": spec.user, "device_requests": device_requests or None, "labels": dict(spec.labels),
            "shm_size": spec.shm_size}


# --- the engine ----------------------------------------------------------------------------------------

def connect():
    """A docker-py client for DOCKER_HOST (or the default socket), or a one-line UserError with the fix."""
    from launcher.backends import require_sdk

    require_sdk("local")
    import docker
    from docker.errors import DockerException
    from requests.exceptions import RequestException

    where = os.environ.get("DOCKER_HOST") or "the default socket"
    try:
        client = docker.from_env()
        client.ping()
        return client
    except (DockerException, RequestException, OSError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"{UNREACHABLE} at {where} ({reason}): {PODMAN_SOCKET_FIX}") from None


def engine_of(client) -> tuple[str, tuple[int, ...]]:
    """("podman" | "docker", version): Podman reports itself as a component of its Docker API version."""
    for component in client.version().get("Components") or []:
        if "podman" in component.get("Name", "").lower():
            numbers = re.findall(r"\d+", component.get("Version", ""))[:3]
            return "podman", tuple(int(n) for n in numbers)
    return "docker", ()


def image_missing(image: str, family: str) -> str | None:
    """None when this machine's engine has `image`, else why the local backend cannot run it (one phrase):
    how `launcher run` without --backend decides to run here."""
    try:
        client = connect()
    except UserError as exc:
        if not exc.problems[0].startswith(UNREACHABLE):
            return exc.problems[0]  # the docker package is missing: the line names the install command
        # connect's line carries the engine's own words and the socket recipe: too long inside another line
        where = os.environ.get("DOCKER_HOST") or "the default socket"
        return f"{UNREACHABLE} at {where}: start Docker, or Podman's API (`podman system service`)"
    from docker.errors import ImageNotFound

    with contextlib.closing(client):
        try:
            client.images.get(image)
        except ImageNotFound:
            return f"image {image} is not on this machine: build it with `{labels.make_command(family)}`"
    return None


def image_labels(client, image: str, family: str) -> dict[str, str]:
    from docker.errors import ImageNotFound

    try:
        return client.images.get(image).labels or {}
    except ImageNotFound:
        fix = labels.make_command(family)
        if image == labels.default_image(family):
            raise UserError(f"image {image} is not on this machine: build it with `{fix}`") from None
        raise UserError(f"image {image} is not on this machine: pull it, or build the default image with "
                        f"`{fix}` and drop --image") from None


def pinned(client, spec: ContainerSpec) -> ContainerSpec:
    """The spec telling the container the engine's id of the image its tag names now: run.json pins the run to it
    (`launcher run --from` runs that id again)."""
    return replace(spec, env=spec.env | {"LORA_GYM_IMAGE_ID": client.images.get(spec.image).id})


def _stream(container, out, finished: threading.Event) -> None:
    # Raw bytes as they arrive: the entrypoint already prefixes each line with its step name.
    try:
        for chunk in container.logs(stream=True, follow=True):
            out.write(chunk)
            out.flush()
    finally:
        finished.set()


# Start failures that mean "no GPU runtime here", and their fixes.
GPU_HINTS = {"device driver": "install the NVIDIA Container Toolkit, or pass --gpu-ids none",
             "cdi device": "generate the CDI spec with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`, "
                           "or pass --gpu-ids none"}


def start_error(explanation: str) -> UserError:
    hints = [fix for needle, fix in GPU_HINTS.items() if needle in explanation.lower()]
    return UserError(f"the container did not start: {explanation.strip()}" + (f": {hints[0]}" if hints else ""))


def _follow(container, out) -> int:
    from docker.errors import APIError

    try:
        container.start()
    except APIError as exc:
        raise start_error(str(exc.explanation or exc)) from None
    # Logs stream in a thread so the main thread stays free to take Ctrl-C and stop the container
    # while its last lines (the entrypoint's shutdown) still come through. The main thread waits on an
    # Event, never on Thread.join: on Python < 3.13 a Ctrl-C that interrupts join() marks the thread as
    # finished while it still runs (CPython gh-90882), and the lines that say why the run stopped were lost.
    finished = threading.Event()
    threading.Thread(target=_stream, args=(container, out, finished), daemon=True).start()
    try:
        while not finished.wait(0.5):
            pass
        return container.wait()["StatusCode"]
    except KeyboardInterrupt:
        _stop(container)
        # The log stream ends when the container has exited: wait for it, so the entrypoint's last
        # lines reach the user before the container is removed.
        finished.wait(LOG_DRAIN_S)
        return 130


def _stop(container) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; a second Ctrl-C kills at once."""
    from docker.errors import APIError

    print(f"launcher: stopping the container (SIGTERM now, SIGKILL after {STOP_TIMEOUT_S} s; Ctrl-C again "
          "to kill it now)", file=sys.stderr, flush=True)
    try:
        with contextlib.suppress(APIError):  # it may have exited on its own meanwhile
            container.stop(timeout=STOP_TIMEOUT_S)
    except KeyboardInterrupt:
        print("launcher: killing the container", file=sys.stderr, flush=True)
        with contextlib.suppress(APIError):
            container.kill()


def _remove(container) -> None:
    from docker.errors import APIError, NotFound

    try:
        container.remove(force=True)
    except NotFound:
        pass
    except APIError as exc:
        print(f"launcher: could not remove container {container.short_id} ({exc.explanation}): "
              f"run `docker rm -f {container.short_id}`", file=sys.stderr)


def run_container(client, spec: ContainerSpec, device_requests: list[dict], out=None) -> int:
    """Start, stream logs until it exits, return its status; Ctrl-C stops it (exit 130). Always removed."""
    from docker.errors import APIError

    try:
        container = client.containers.create(**run_kwargs(spec, device_requests))
    except APIError as exc:  # Podman resolves CDI devices at create time, Docker at start
        raise start_error(str(exc.explanation or exc)) from None
    from launcher.backends.bars import ProgressBars, log_output

    stream = out or log_output(sys.stdout)
    try:
        return _follow(container, stream)
    finally:
        if isinstance(stream, ProgressBars):
            stream.close()  # ends the last bar's line
        _remove(container)


def engine_execute(spec: ContainerSpec, job: Job) -> Callable[[ContainerSpec], int]:
    """The real engine, checked once (reachable, GPU requests, the image's labels): runs a container to its end."""
    client = connect()
    requests = gpu_requests(spec.gpus, *engine_of(client))
    preset = job.loaded.preset
    labels.check_image(spec.image, image_labels(client, spec.image, preset.family), preset.family,
                       preset.model.task)
    return lambda run: run_container(client, pinned(client, run), requests)


def _named(job: Job, options: LaunchOptions) -> LaunchOptions:
    """The run id is chosen here, not in the container, so the run registry knows its run folder."""
    return dataclasses.replace(options, run_id=options.run_id or job.plan.run_id)


class LocalBackend:
    capabilities = Capabilities(name="local", max_runtime_hours=None, detach=False)

    def check(self, job: Job, options: LaunchOptions) -> None:
        container_spec(job, options)
        parse_gpus(options.gpus, host_gpu_count())  # in range of this machine's GPUs, where it can be counted

    def dry_run_data(self, job: Job, options: LaunchOptions) -> dict:
        return {"argv": docker_run_argv(container_spec(job, _named(job, options)))}

    def dry_run(self, job: Job, options: LaunchOptions) -> str:
        return render_command(self.dry_run_data(job, options)["argv"])

    def launch(self, job: Job, options: LaunchOptions) -> int:
        options = _named(job, options)
        spec = container_spec(job, options)  # bad options fail before the engine is touched
        execute = engine_execute(spec, job)
        output = output_dir(options)
        Path(output).mkdir(parents=True, exist_ok=True)  # only now: a refused run writes nothing
        # Recorded like a cloud run, so `launcher status` lists it and reads its run folder (local_runs.py).
        runs.save({"run_id": options.run_id, "backend": "local", "preset": job.loaded.preset.name,
                   "expert": job.plan.expert, "output": output,
                   "created_at": datetime.now(UTC).isoformat(timespec="seconds")})
        return execute(spec)

    def status(self, record: dict) -> dict:
        return local_runs.status(record)

    def logs(self, record: dict, follow: bool) -> int:
        raise UserError(local_runs.not_detached(record, "its logs went to the terminal that ran it"))

    def stop(self, record: dict) -> int:
        raise UserError(local_runs.not_detached(record, "it stops with Ctrl-C in the terminal that runs it"))

    def pull(self, record: dict, dest: str) -> int:
        print(f"local run {record['run_id']} is already in {local_runs.run_folder(record)}: nothing to download")
        return 0
