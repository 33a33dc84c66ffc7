"""The SkyPilot backend: the same pinned image on any cloud, Kubernetes cluster or GPU marketplace SkyPilot
reaches, as a managed job that SkyPilot restarts elsewhere after a spot preemption.

The task is plain data first (task_config): `--dry-run` prints it as YAML without importing `sky` or holding a
secret. Secrets are named in the task without a value, and only those set in this environment that the run
needs (task_secrets); their values go to SkyPilot at launch only (sky_task). The run id is fixed in the task,
so a recovered job names the same run folder in the mounted store and the entrypoint resumes it from its
newest saved state (docs/resuming.md). The bucket and `pull`: skypilot_store.py. `sky` is imported only
to launch and to look a run up (`make skypilot`: SkyPilot pins click<8.2, so it gets a venv of its own).

The image runs as root (images/Dockerfile): SkyPilot starts the container, runs its setup in it as root
(`docker exec -u 0`), then reaches it over SSH as the image's default user (`whoami` in the container), and
runs the mounts and the task as that user. Its mount and file-mount scripts call `sudo mkdir`, `sudo chmod`,
`sudo ln`, and make `sudo` a no-op only for root (sky/provision/docker_utils.py DockerInitializer.initialize;
sky/utils/command_runner.py ALIAS_SUDO_TO_EMPTY_FOR_ROOT_CMD; sky/data/mounting_utils.py get_mounting_script;
sky/backends/backend_utils.py FileMountHelper.make_safe_symlink_command). Two more things SkyPilot's setup needs
of the image: root's HOME is /root (it installs the SSH key under the container's `printenv HOME`, and sshd
reads root's keys from /root/.ssh), and the venv stays on PATH in a login shell (it saves the environment of
`bash --login` for its SSH sessions, SETUP_ENV_VARS_CMD, after Debian's /etc/profile has reset PATH).
tests/test_skypilot_container.py runs those generated commands in the image.
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from launcher.backends import Capabilities, LaunchOptions, labels, skypilot_store
from launcher.core.errors import UserError
from launcher.core.job import Job

MOUNT = "/lora-gym"  # in the container: the dataset (uploaded by SkyPilot) and the persistent store
# SkyPilot accelerator names per preset GPU class (resources.gpu_memory_gb): the smallest class that fits.
DEFAULT_ACCELERATOR = ((24, "L4"), (48, "L40S"), (80, "H100"), (141, "H200"))
ENTRYPOINT = "lora-gym-entrypoint"
HF_SECRET = "HF_TOKEN"  # a slim image downloads (possibly gated) weights with it; a full image needs none
# SkyPilot's docker login for a private image (sky/skylet/constants.py DOCKER_LOGIN_ENV_VARS): all three
# together, in the task's envs or all in its secrets (sky/task.py _check_docker_login_config); the password
# makes it secrets. SkyPilot turns them into resources' DockerLoginConfig (sky/task.py
# _with_docker_login_config) and runs `docker login` on the VM before the pull (sky/provision/docker_utils.py).
DOCKER_LOGIN = ("SKYPILOT_DOCKER_USERNAME", "SKYPILOT_DOCKER_PASSWORD", "SKYPILOT_DOCKER_SERVER")
# Store mode: MOUNT_CACHED writes through a local cache and uploads asynchronously, SkyPilot's advice for
# checkpoints (a plain MOUNT rewrites whole objects on every append).
STORE_MODE = "MOUNT_CACHED"


def accelerator(job: Job, options: LaunchOptions) -> str:
    if options.gpu_type:
        return options.gpu_type  # any SkyPilot accelerator name; SkyPilot's optimizer checks it at launch
    need = job.plan.resources.gpu_memory_gb
    fits = [name for memory, name in DEFAULT_ACCELERATOR if memory >= need]
    if not fits:
        raise UserError(f"the preset needs {need} GB of GPU memory, more than any default here: pick one with --gpu")
    return fits[0]


def store_name(job: Job, options: LaunchOptions) -> str:
    return skypilot_store.store_name(job.loaded.preset.family, options.volume)


def image_of(job: Job, options: LaunchOptions) -> str:
    return labels.cloud_image(options.image, job.loaded.preset.family, "SkyPilot")


def slim(image: str) -> bool:
    """Whether the tag says slim (`<version>-slim[-<tasks>]`, launcher.imagebuild.image_tag); a bare digest: full."""
    return "slim" in labels.image_tag(image).split("-")[1:]


def task_secrets(image: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The secrets the task names: HF_TOKEN for a slim image when it is set, the docker login when it is set.

    A secret named without a value that is not given at launch is, to SkyPilot 0.14.1, a managed secret
    reference, and the launch fails with `No value available for secret(s)` (sky/task.py from_yaml_config,
    sky/execution.py _resolve_managed_secrets): so a secret is named only when this environment has it."""
    env = os.environ if env is None else env
    names = [HF_SECRET] if slim(image) and env.get(HF_SECRET) else []
    given = [name for name in DOCKER_LOGIN if name in env]
    if given:
        if missing := [name for name in DOCKER_LOGIN if name not in env]:
            raise UserError(f"{', '.join(given)} set but not {', '.join(missing)}: SkyPilot logs in to a registry "
                            f"only with all three ({', '.join(DOCKER_LOGIN)}); set them all, or none for a "
                            "public image")
        server = env["SKYPILOT_DOCKER_SERVER"]
        # SkyPilot prefixes the image with `server/` unless it starts with it (DockerLoginConfig.format_image)
        if labels.registry_of(image) != server:
            raise UserError(f"SKYPILOT_DOCKER_SERVER is {server} but the image {image} is in "
                            f"{labels.registry_of(image)}: set SKYPILOT_DOCKER_SERVER={labels.registry_of(image)}")
        names += DOCKER_LOGIN
    return names


def preset_file(job: Job) -> str | None:
    """Where a user's preset file lands in the container (registry names need none)."""
    origin = job.loaded.origin
    return f"{MOUNT}/preset/{Path(origin).stem}.toml" if Path(origin).is_file() else None


def task_env(job: Job, run_id: str, hours: float | None, image: str) -> dict[str, str]:
    env = {"LORA_GYM_PRESET": preset_file(job) or job.loaded.origin, "LORA_GYM_IMAGE": image}  # image: for run.json
    if job.plan.expert:
        env["LORA_GYM_EXPERT"] = job.plan.expert
    if job.loaded.overrides:
        env["LORA_GYM_SET"] = shlex.join(job.loaded.overrides)
    # No cache-folder lock: the store is an rclone bucket mount (sky/data/mounting_utils.py get_mount_cached_cmd),
    # where an exclusive create on one machine is not seen by another; cache files still land whole by content key.
    env |= {"LORA_GYM_RUN_ID": run_id, "LORA_GYM_DATASET_DIR": f"{MOUNT}/dataset",
            "LORA_GYM_OUTPUT_DIR": f"{MOUNT}/store/output", "LORA_GYM_CACHE_DIR": f"{MOUNT}/store/cache",
            "LORA_GYM_CACHE_LOCK": "none"}
    if hours:
        env["LORA_GYM_MAX_HOURS"] = f"{hours:.4g}"
    return env


def task_config(job: Job, options: LaunchOptions) -> dict:
    """The SkyPilot task as the dict its YAML holds (sky.Task.from_yaml_config reads exactly this)."""
    image = image_of(job, options)
    resources = {"image_id": f"docker:{image}",
                 "accelerators": {accelerator(job, options): job.plan.resources.gpu_count},
                 "memory": f"{max(job.plan.resources.host_memory_gb, 32)}+"}
    if options.spot:  # opt-in: cheaper, preemptible; the managed job is recovered on another instance
        resources |= {"use_spot": True, "job_recovery": {"strategy": "FAILOVER", "max_restarts_on_errors": 1}}
    mounts: dict = {f"{MOUNT}/dataset": os.path.abspath(options.dataset),
                    f"{MOUNT}/store": {"name": store_name(job, options), "mode": STORE_MODE}}
    if preset_file(job):  # a user's preset file travels with the task
        mounts[preset_file(job)] = os.path.abspath(job.loaded.origin)
    config = {"name": f"lora-gym-{options.run_id or job.plan.run_id}"[:63], "resources": resources,
              "envs": task_env(job, options.run_id or job.plan.run_id, options.max_hours, image)}
    if secrets := task_secrets(image):
        config["secrets"] = dict.fromkeys(secrets)  # names only: the values are given at launch (sky_task)
    return config | {"file_mounts": mounts, "run": ENTRYPOINT}


def render(config: dict) -> str:
    import yaml  # PyYAML comes with huggingface_hub, a dependency of LoRA Gym

    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def secrets_note(config: dict) -> str | None:
    if config.get("secrets"):
        return ("note: the secrets above are named without their values: `launcher run` sends them from this "
                "environment; with `sky jobs launch` add `--secret NAME` for each")
    return None


def save_state_note(job: Job, options: LaunchOptions) -> str | None:
    if options.spot and not job.loaded.preset.train.save_state:
        return ("note: with --spot, add --set train.save_state=true: a preempted run then resumes from its last "
                "saved epoch instead of starting its training again")
    return None


# --- the platform (sky imported only here) -----------------------------------------------------------------

# SkyPilot's answers when nothing is enabled: the optimizer's NoCloudAccessError, or (for a task with bucket
# mounts, checked first) "Cloud-based file_mounts are specified, but no cloud storage is available".
NO_CLOUD = ("no cloud", "no enabled cloud", "nocloudaccess")


def _one_line(exc: BaseException) -> UserError:
    text = " ".join(str(exc).split())
    kind = type(exc).__name__
    if any(word in (text + kind).lower() for word in NO_CLOUD):
        return UserError(f"SkyPilot has no enabled cloud or Kubernetes cluster ({kind}: {text[:200]}): run "
                         "`sky check` to set up credentials for one, then launch again")
    if "ApiServer" in kind or "api server" in text.lower():
        return UserError(f"SkyPilot's API server did not answer ({kind}): start it with `sky api start`, or point "
                         "SKYPILOT_API_SERVER_ENDPOINT at yours")
    return UserError(f"SkyPilot refused the job ({kind}: {text[:300]}): see `sky check` and `sky show-gpus`")


def sky_task(config: dict):
    """The task for SkyPilot, each named secret given its value from this environment (SkyPilot keeps it as
    a SecretStr and redacts it when it shows the task)."""
    import sky

    secrets = [(name, os.environ[name]) for name in config.get("secrets") or {}]
    return sky.Task.from_yaml_config(copy.deepcopy(config), secrets_overrides=secrets or None)


def submit(config: dict) -> int:
    """The managed job's id; SkyPilot's refusals (no cloud, no capacity, no server) become one UserError."""
    import sky

    try:
        job_ids, _ = sky.stream_and_get(sky.jobs.launch(sky_task(config), name=config["name"]))
    except (Exception, SystemExit) as exc:
        if isinstance(exc, UserError):
            raise
        raise _one_line(exc) from None
    return job_ids[0]


class SkyPilotBackend:
    capabilities = Capabilities(name="skypilot", max_runtime_hours=None, detach=True)

    def check(self, job: Job, options: LaunchOptions) -> None:
        """The image, the docker login it needs and a --volume bucket; the default bucket is made at launch."""
        task_secrets(image_of(job, options))
        if options.volume is not None:
            store_name(job, options)

    def dry_run_data(self, job: Job, options: LaunchOptions) -> dict:
        return {"task": task_config(job, options), "submit": "sky.jobs.launch(task) (a managed job)"}

    def dry_run(self, job: Job, options: LaunchOptions) -> str:
        config = task_config(job, options)
        notes = [note[6:] for note in (secrets_note(config), save_state_note(job, options)) if note]
        return render(config) + "".join(f"# {note}\n" for note in notes)

    # No `quote`: SkyPilot's optimizer picks the cloud, and so the price, at launch.

    def launch(self, job: Job, options: LaunchOptions) -> int:
        from launcher import runs

        # --max-cost is refused before this (launcher/cli/backend_options.py): SkyPilot prices only at launch.
        config = task_config(job, options)
        if note := save_state_note(job, options):
            print(note, file=sys.stderr)
        job_id = submit(config)
        store = config["file_mounts"][f"{MOUNT}/store"]["name"]
        runs.save({"run_id": job.plan.run_id, "backend": "skypilot", "preset": job.plan.preset,
                   "expert": job.plan.expert, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                   "job_id": job_id, "store": store, "store_url": _store_url(store), "spot": options.spot})
        print(f"run {job.plan.run_id} submitted to SkyPilot as managed job {job_id}: `launcher status "
              f"{job.plan.run_id}`, `launcher logs {job.plan.run_id} --follow`", file=sys.stderr)
        return self.logs(runs.load(job.plan.run_id), follow=True) if options.follow else 0

    def status(self, record: dict) -> dict:
        import sky

        jobs = sky.get(sky.jobs.queue(refresh=False, job_ids=[record["job_id"]]))
        job = jobs[0] if jobs else {}
        state = job.get("status") if isinstance(job, dict) else getattr(job, "status", None)
        return {"run": record["run_id"], "managed job": record["job_id"], "state": str(state or "unknown"),
                "store": record["store"], "spot": record.get("spot", False)}

    def logs(self, record: dict, follow: bool) -> int:
        import sky

        return sky.jobs.tail_logs(job_id=record["job_id"], follow=follow) or 0

    def stop(self, record: dict) -> int:
        import sky

        sky.get(sky.jobs.cancel(job_ids=[record["job_id"]]))
        print(f"cancelled managed job {record['job_id']} ({record['run_id']})", file=sys.stderr)
        return 0

    def pull(self, record: dict, dest: str) -> int:
        return skypilot_store.pull(record, dest)


def _store_url(name: str) -> str | None:
    """The bucket's URL for `pull`, read once SkyPilot has made the bucket (at submission); None when SkyPilot
    cannot say now: `pull` asks again then."""
    try:
        return skypilot_store.store_url(name)
    except Exception:  # the job is submitted whatever this lookup answers
        return None
