"""Refused before anything starts, round 2 (issue 19): values handed to container engines and platforms (image
references, GPU ids, volume and bucket names), a backend's missing optional package, and options meant for
another backend. Each case: exit code 2, exactly one `error:` line naming the problem and the fix, no traceback,
nothing on stdout, nothing printed before the refusal, and the folder tree as it was."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from conftest import EXAMPLE_DATASET, ROOT, clean_env
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from test_input_classes import SECRETS, _tree

from launcher.backends import BACKENDS, NEEDS
from launcher.cli import backend_options
from launcher.cli.main import main as launcher_main
from launcher.cli.run_cmd import run
from launcher.cli.sweep_cmd import SWEEP_BACKENDS, sweep
from launcher.core import engine_values, extras
from launcher.core.errors import UserError

IMAGE = "ghcr.io/you/lora-gym-wan21:0.1.0"
RUN = ["run", "--preset", "wan21-t2v-1.3b", "--dataset", "{dataset}"]
DRY = [*RUN, "--dry-run"]
LOCAL = [*DRY, "--backend", "local", "--output", "{tmp}/out"]
MODAL = [*DRY, "--backend", "modal", "--image", IMAGE]
RUNPOD = [*DRY, "--backend", "runpod", "--image", IMAGE]
SKY = [*DRY, "--backend", "skypilot", "--image", IMAGE]
SWEEP = ["sweep", "--preset", "wan21-t2v-1.3b", "--dataset", "{dataset}", "--grid", "train.learning_rate=5e-5,1e-4"]
SWEEP_DRY = [*SWEEP, "--dry-run"]


@dataclass
class Case:
    cls: str
    id: str
    argv: list[str]
    words: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    gpus_here: int | None = None  # a fake `nvidia-smi -L` on PATH listing this many GPUs


def image(argv: list[str], ref: str) -> list[str]:
    """argv with its --image replaced by (or given) `ref`."""
    if "--image" in argv:
        at = argv.index("--image")
        return [*argv[:at + 1], ref, *argv[at + 2:]]
    return [*argv, "--image", ref]


LOWER = ("repository names are lower-case",)
CASES = [
    # --- 1. values handed to engines and platforms: one check per kind, every backend, run and sweep
    Case("engine", "local image upper-case", image(LOCAL, "Lora-Gym-Wan21:dev"), ("'Lora-Gym-Wan21'", *LOWER)),
    Case("engine", "local image bad tag", image(LOCAL, "lora-gym-wan21:-dev"), ("the tag '-dev'", "1-128")),
    Case("engine", "local image short digest", image(LOCAL, "lora-gym-wan21@sha256:abc"),
         ("digest 'sha256:abc'", "64 lower-case hex")),
    Case("engine", "local image with a space", image(LOCAL, "lora-gym wan21"), ("spaces",)),
    Case("engine", "local empty image", image(LOCAL, ""), ("--image ''", "empty")),
    Case("engine", "modal image upper-case", image(MODAL, "ghcr.io/You/lora-gym-wan21:0.1.0"), ("'You'", *LOWER)),
    Case("engine", "modal image two tags", image(MODAL, "ghcr.io/you/lora-gym-wan21:0.1.0:1"), ("the tag '0.1.0:1'",)),
    Case("engine", "runpod image empty path part", image(RUNPOD, "ghcr.io//lora-gym-wan21:0.1.0"),
         ("'' in its repository name",)),
    Case("engine", "runpod image bad registry port", image(RUNPOD, "ghcr.io:x/you/lora-gym:1"),
         ("registry 'ghcr.io:x'",)),
    Case("engine", "skypilot image unknown digest", image(SKY, f"{IMAGE}@md5:{'a' * 32}"), ("digest 'md5:",)),
    Case("engine", "long image is cut in the message", image(MODAL, "ghcr.io/you/" + "x" * 500),
         ("...'", "over Docker's 255")),
    Case("engine", "registry variable upper-case", [*DRY, "--backend", "modal"],
         ("default image (from LORA_GYM_REGISTRY)", "'You'", *LOWER), env={"LORA_GYM_REGISTRY": "ghcr.io/You"}),
    Case("engine", "gpu id negative", [*LOCAL, "--gpu-ids", "-1"], ("'-1' is negative", "nvidia-smi -L")),
    Case("engine", "gpu id repeated", [*LOCAL, "--gpu-ids", "0,1,0"], ("names GPU 0 more than once",)),
    Case("engine", "gpu id out of the static range", [*LOCAL, "--gpu-ids", "0,64"], ("GPU 64 is out of range",)),
    Case("engine", "gpu id not an id", [*LOCAL, "--gpu-ids", "0;rm -rf /"], ("is not a GPU index or UUID",)),
    Case("engine", "gpu id empty in the list", [*LOCAL, "--gpu-ids", "0,,1"], ("'' is not a GPU index",)),
    Case("engine", "gpu id beyond this machine's", [*RUN, "--backend", "local", "--output", "{tmp}/out", "--gpu-ids",
                                                    "1,2"], ("GPU 2 is out of range", "this machine has 2 GPUs"),
         gpus_here=2),
    Case("engine", "docker volume of one character", [*LOCAL, "--cache-volume", "c"], ("not a volume name", "2-255")),
    Case("engine", "docker volume with a slash", [*LOCAL, "--cache-volume", "/srv/cache"], ("not a volume name",)),
    Case("engine", "modal volume with a slash", [*MODAL, "--cache-volume", "cache/wan21"],
         ("not a Modal volume name",)),
    Case("engine", "modal volume shaped like an app id", [*MODAL, "--cache-volume", "ap-" + "a1" * 11],
         ("not a Modal volume name",)),
    Case("engine", "modal volume too long", [*MODAL, "--cache-volume", "v" * 65], ("up to 64",)),
    Case("engine", "runpod volume id with a space", [*RUNPOD, "--volume", "vol 1"],
         ("not a RunPod network volume id",)),
    Case("engine", "bucket upper-case", [*SKY, "--volume", "My-Bucket"], ("not a bucket name", "S3's rules")),
    Case("engine", "bucket shaped like an IP address", [*SKY, "--volume", "192.168.1.10"], ("not a bucket name",)),
    Case("engine", "bucket with a reserved prefix", [*SKY, "--volume", "xn--lora-gym"], ("S3 reserves",)),
    Case("engine", "bucket with a reserved suffix", [*SKY, "--volume", "lora-gym-s3alias"], ("S3 reserves",)),
    Case("engine", "sweep local gpu id repeated", [*SWEEP_DRY, "--backend", "local", "--output", "{tmp}/out",
                                                   "--gpu-ids", "1,1"], ("names GPU 1 more than once",)),
    Case("engine", "sweep local image bad", [*SWEEP_DRY, "--backend", "local", "--output", "{tmp}/out", "--image",
                                             "lora-gym-wan21:"], ("the tag ''",)),
    Case("engine", "sweep modal volume bad", [*SWEEP_DRY, "--backend", "modal", "--image", IMAGE, "--cache-volume",
                                              "a b"], ("not a Modal volume name",)),
    Case("engine", "sweep runpod volume bad", [*SWEEP_DRY, "--backend", "runpod", "--image", IMAGE, "--volume",
                                               "../v"], ("not a RunPod network volume id",)),
    Case("engine", "sweep runpod image bad", [*SWEEP_DRY, "--backend", "runpod", "--image", "GHCR.IO/YOU/X"], LOWER),
    # launches: the refusal comes before the media check's warnings, the estimate or any engine call
    Case("engine", "modal launch, bad image, no estimate first", [*RUN, "--backend", "modal", "--image",
                                                                  "ghcr.io/you/Lora:1"], LOWER),
    Case("engine", "modal launch, default image in no registry", [*RUN, "--backend", "modal"],
         ("Modal pulls the image from a registry", "names no registry")),
    Case("engine", "runpod launch, bad volume id", [*RUN, "--backend", "runpod", "--image", IMAGE, "--volume", "a/b"],
         ("not a RunPod network volume id",)),
    Case("engine", "sweep local launch beyond this machine's GPUs", [*SWEEP, "--backend", "local", "--output",
                                                                     "{tmp}/out", "--gpu-ids", "0,1"],
         ("GPU 1 is out of range", "this machine has 1 GPU,"), gpus_here=1),

    # --- 9. options for another backend: one table, run and sweep
    Case("options", "--gpus is renamed", [*DRY, "--gpus", "2"], ("--gpus is now --gpu-ids", "--gpus-per-run N")),
    Case("options", "sweep --gpus is renamed", [*SWEEP_DRY, "--backend", "local", "--gpus", "0,1"],
         ("--gpus is now --gpu-ids",)),
    Case("options", "--gpu with local", [*LOCAL, "--gpu", "H100"],
         ("--gpu applies to --backend modal, runpod or skypilot, not local",)),
    Case("options", "--gpu-ids with modal", [*MODAL, "--gpu-ids", "0,1"],
         ("--gpu-ids applies to --backend local, not modal",)),
    Case("options", "--max-hours with local", [*LOCAL, "--max-hours", "3"],
         ("--max-hours applies to --backend modal, runpod or skypilot, not local",)),
    Case("options", "--max-cost with skypilot", [*SKY, "--max-cost", "5"],
         ("--max-cost applies to --backend modal or runpod, not skypilot",)),
    Case("options", "--spot with runpod", [*RUNPOD, "--spot"], ("--spot applies to --backend skypilot, not runpod",)),
    Case("options", "--volume with modal", [*MODAL, "--volume", "v1"], ("--volume applies to --backend runpod or "
                                                                         "skypilot, not modal",)),
    Case("options", "--cache-volume with runpod", [*RUNPOD, "--cache-volume", "c1"],
         ("--cache-volume applies to --backend local or modal, not runpod",)),
    Case("options", "--output with skypilot", [*SKY, "--output", "{tmp}/out"],
         ("--output applies to --backend local",)),
    Case("options", "--image without a backend", [*DRY, "--image", IMAGE],
         ("--image applies only with --backend local, modal, runpod or skypilot", "drop --image")),
    Case("options", "--follow without a backend", [*DRY, "--follow"], ("--follow applies only with --backend",)),
    Case("options", "--output without a backend, not a dry run", [*RUN, "--output", "{tmp}/out"],
         ("no backend",)),
    Case("options", "sweep --volume with local", [*SWEEP_DRY, "--backend", "local", "--output", "{tmp}/out",
                                                  "--volume", "v1"],
         ("--volume applies to --backend runpod, not local",)),
    Case("options", "sweep --output with modal", [*SWEEP_DRY, "--backend", "modal", "--image", IMAGE, "--output",
                                                  "{tmp}/out"], ("--output applies to --backend local, not modal",)),
    Case("options", "sweep --gpu without a backend", [*SWEEP_DRY, "--gpu", "H100"],
         ("--gpu applies only with --backend modal or runpod",)),
]


def fake_nvidia_smi(folder: Path, count: int) -> None:
    """A stand-in for `nvidia-smi -L` listing `count` GPUs, first on PATH (a test double)."""
    folder.mkdir()
    lines = "".join(f"GPU {n}: NVIDIA H100 80GB HBM3 (UUID: GPU-0000000{n}-0000-0000-0000-000000000000)\\n"
                    for n in range(count))
    script = folder / "nvidia-smi"
    script.write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    script.chmod(0o755)


def test_the_table_covers_each_class():
    counts = Counter(case.cls for case in CASES)
    assert counts["engine"] >= 25 and counts["options"] >= 12 and max(Counter(c.id for c in CASES).values()) == 1


@pytest.mark.parametrize("case", CASES, ids=[f"{c.cls}: {c.id}" for c in CASES])
def test_refused_before_anything_starts(case, tmp_path, dataset, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    if case.gpus_here is not None:
        fake_nvidia_smi(tmp_path / "bin", case.gpus_here)
        monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    home = Path(os.environ["LORA_GYM_HOME"])
    before, home_before = _tree(tmp_path), _state(home)
    code = launcher_main([a.format(dataset=dataset, tmp=tmp_path) for a in case.argv])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and len(lines[0]) <= 400 and out == ""
    for word in case.words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert not [name for name, value in SECRETS.items() if value in out + err]
    assert _tree(tmp_path) == before and _state(home) == home_before


def _state(home: Path) -> dict:
    """The launcher's state folder without its dataset hash cache (a cache, kept whatever the outcome)."""
    return {name: data for name, data in _tree(home).items() if name != "file-hashes.json"}


# --- 9. the table itself: every option declares its backends; each misplaced one is refused ------------------

COMMANDS = {"run": (run, sorted(BACKENDS)), "sweep": (sweep, SWEEP_BACKENDS)}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_option_declares_where_it_applies(command):
    params = [p.name for p in COMMANDS[command][0].params if isinstance(p, click.Option)]
    undeclared = [p for p in params if p not in backend_options.APPLIES and p not in backend_options.EVERYWHERE]
    assert undeclared == [], f"add {undeclared} to launcher/cli/backend_options.py APPLIES or EVERYWHERE"
    assert set(backend_options.APPLIES) <= set(params) | {"follow", "spot"}  # run has those two, sweep not


def _misplaced():
    """(command, option, value, backend) for every option of the table given with a backend that does not read it."""
    for name, (command, backends) in sorted(COMMANDS.items()):
        for param in command.params:
            applies = backend_options.APPLIES.get(param.name)
            if applies is None:
                continue
            value = [] if param.is_flag else ["9" if "max" in param.name else "x1"]
            for backend in [b for b in backends if b not in applies]:
                yield name, param.opts[0], value, backend


MISPLACED = list(_misplaced())


def test_the_generated_cases_cover_every_option():
    assert len(MISPLACED) >= 20 and {m[1] for m in MISPLACED} >= {"--gpu-ids", "--gpu", "--output", "--volume"}


@pytest.mark.parametrize("command, flag, value, backend", MISPLACED,
                         ids=[f"{m[0]} {m[1]} --backend {m[3]}" for m in MISPLACED])
def test_an_option_for_another_backend_is_refused(command, flag, value, backend, capsys):
    base = RUN if command == "run" else SWEEP
    argv = [a.format(dataset=EXAMPLE_DATASET) for a in base] + ["--dry-run", "--backend", backend, flag, *value]
    code = launcher_main(argv)
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {flag} applies to --backend ") and f"not {backend}: drop {flag}" in err


# --- 1. the validators against the platforms' own rules, on generated input ---------------------------------

_part = st.from_regex(engine_values.PATH_COMPONENT, fullmatch=True).filter(lambda s: len(s) < 40)
_domain = st.sampled_from(["ghcr.io", "docker.io", "localhost:5000", "registry.example.com:443", "[::1]:5000",
                           "10.0.0.7:5000", "quay.io"])
_tag = st.from_regex(engine_values.TAG, fullmatch=True)
_digest = st.sampled_from(sorted(engine_values.DIGEST_HEX.items())).flatmap(
    lambda kv: st.text("0123456789abcdef", min_size=kv[1], max_size=kv[1]).map(lambda h: f"{kv[0]}:{h}"))


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.none(), _domain), st.lists(_part, min_size=1, max_size=3), st.one_of(st.none(), _tag),
       st.one_of(st.none(), _digest))
def test_every_reference_docker_s_grammar_makes_is_accepted(domain, parts, tag, digest):
    # Without a registry, a first part that Docker would read as one (a '.', or localhost) is a registry host.
    assume(domain or len(parts) == 1 or ("." not in parts[0] and parts[0] != "localhost"))
    ref = "/".join(([domain] if domain else []) + parts) + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    assert engine_values.image_reference(ref) == ref


@settings(max_examples=150, deadline=None)
@given(st.lists(_part, min_size=1, max_size=3), st.data())
def test_an_upper_case_letter_in_the_repository_is_named(parts, data):
    index = data.draw(st.integers(0, len(parts) - 1))
    letters = [i for i, ch in enumerate(parts[index]) if ch.isalpha()]
    if not letters:
        parts[index] += "x"
        letters = [len(parts[index]) - 1]
    at = data.draw(st.sampled_from(letters))
    parts[index] = parts[index][:at] + parts[index][at].upper() + parts[index][at + 1:]
    with pytest.raises(UserError, match="repository names are lower-case"):
        engine_values.image_reference("ghcr.io/" + "/".join(parts) + ":1")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="ascii"), max_size=70))
def test_modal_volume_names_follow_modal_s_own_check(name):
    name_utils = pytest.importorskip("modal._utils.name_utils")  # the installed SDK's rule (modal 1.6.4)
    try:
        engine_values.modal_volume(name)
        ours = True
    except UserError:
        ours = False
    # Modal's pattern ends in `$`, which re.match also finds before a final newline: "cache\n" passes its check
    # and then names another volume; ours refuses it.
    assert ours == (bool(name) and name_utils.is_valid_object_name(name) and not name.endswith("\n"))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-3, 80), min_size=1, max_size=6), st.one_of(st.none(), st.integers(1, 16)))
def test_gpu_ids_negative_repeated_or_out_of_range_are_refused(ids, count):
    value = ",".join(map(str, ids))
    limit = count if count is not None else engine_values.MAX_GPU_INDEX + 1
    valid = all(0 <= i < limit for i in ids) and len(set(ids)) == len(ids)
    try:
        assert engine_values.gpu_ids(value, count=count) == tuple(map(str, ids)) and valid
    except UserError as exc:
        assert not valid
        said = str(exc)
        assert ("negative" in said) == any(i < 0 for i in ids)
        assert said.count("\n") == 0 and said.startswith(f"--gpu-ids '{value}'")


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet="abcz09.-_A", min_size=1, max_size=70))
def test_bucket_names_follow_s3_s_rules(name):
    rules = (3 <= len(name) <= 63 and re.fullmatch(r"[a-z0-9.-]+", name) and name[0].isalnum() and name[-1].isalnum()
             and ".." not in name and not name.startswith(engine_values.BUCKET_RESERVED_PREFIXES)
             and not name.endswith(engine_values.BUCKET_RESERVED_SUFFIXES))
    try:
        engine_values.bucket_name(name)
        assert rules
    except UserError:
        assert not rules


# --- 8. a missing optional package: checked before anything is printed, with the command that installs it ----

BLOCKER = """import sys
for name in {names!r}:
    sys.modules[name] = None  # as if not installed: find_spec answers None, an import fails
"""


def _blocker(tmp_path: Path, modules: list[str]) -> Path:
    folder = tmp_path / "blocker"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(BLOCKER.format(names=modules))
    return folder


def _blocked_launcher(tmp_path: Path, modules: list[str], argv: list[str]) -> subprocess.CompletedProcess:
    """The real `launcher` console script in a fresh interpreter where `modules` cannot be found."""
    env = clean_env(PYTHONPATH=os.pathsep.join([str(_blocker(tmp_path, modules)), str(ROOT)]))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    launcher = Path(sys.executable).parent / "launcher"
    return subprocess.run([str(launcher), *argv], capture_output=True, text=True, env=env, cwd=work, timeout=120)


LAUNCHES = [(command, backend) for command in ("run", "sweep") for backend in sorted(BACKENDS)
            if not (command == "sweep" and backend == "skypilot")]  # `sweep --backend skypilot` is refused as such


@pytest.mark.parametrize("command, backend", LAUNCHES, ids=[f"{c} --backend {b}" for c, b in LAUNCHES])
def test_a_missing_backend_package_is_one_line_with_the_install_command(command, backend, tmp_path):
    extra, packages = NEEDS[backend]
    argv = [a.format(dataset=EXAMPLE_DATASET) for a in (RUN if command == "run" else SWEEP)]
    argv += ["--backend", backend] + (["--output", str(tmp_path / "out")] if backend == "local" else
                                      ["--image", IMAGE])
    result = _blocked_launcher(tmp_path, list(packages), argv)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: --backend {backend} needs {' and '.join(packages.values())}, not "
                                    "installed: ")
    assert result.stderr.rstrip().endswith(f" install -e '{ROOT}[{extra}]'")
    assert os.listdir(tmp_path / "work") == [] and not (tmp_path / "out").exists()


def test_a_run_s_verbs_say_what_to_install_too(tmp_path):
    home = tmp_path / "home"
    (home / "runs").mkdir(parents=True)
    record = {"run_id": "wan21-t2v-1.3b-20261202-000000", "backend": "modal", "preset": "wan21-t2v-1.3b"}
    (home / "runs" / f"{record['run_id']}.json").write_text(json.dumps(record))
    for verb in ("status", "logs", "stop"):
        blocked = subprocess.run([str(Path(sys.executable).parent / "launcher"), verb, record["run_id"]],
                                 capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                 env=clean_env(LORA_GYM_HOME=str(home), PYTHONPATH=os.pathsep.join(
                                     [str(_blocker(tmp_path, ["modal"])), str(ROOT)])))
        assert blocked.returncode == 2 and blocked.stderr.count("\n") == 1, blocked.stderr
        assert blocked.stderr.startswith(f"error: {record['run_id']} (a modal run) needs modal, not installed: ")


def test_every_backend_s_packages_are_a_pyproject_extra():
    extras_of = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(NEEDS) == set(BACKENDS)
    for backend, (extra, packages) in NEEDS.items():
        names = {re.split(r"[<>=!\[ ]", req, maxsplit=1)[0].lower() for req in extras_of[extra]}
        assert set(packages.values()) <= names, (backend, extra, names)


def test_in_the_clone_the_command_is_the_venv_s_pip(monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "executable", str(ROOT / ".venv" / "bin" / "python"))
    assert extras.install_command("modal") == ".venv/bin/pip install -e '.[modal]'"
    monkeypatch.setattr(extras, "CHECKOUT", ROOT / "not-a-checkout")
    assert extras.install_command("modal") == "pip install 'lora-gym[modal]'"


def test_a_finder_that_refuses_a_name_counts_as_missing(monkeypatch):
    class Refuse:
        def find_spec(self, name, path=None, target=None):
            if name == "json_but_refused":
                raise ImportError("blocked")
            return None

    monkeypatch.setattr(sys, "meta_path", [Refuse(), *sys.meta_path])
    assert extras.missing(["json", "json_but_refused", "no_such_module_here"]) == ["json_but_refused",
                                                                                   "no_such_module_here"]


@pytest.mark.parametrize("fields, flag, named", [
    ({"backend": "local", "output": "OUT", "gpu_type": "H100"}, "--gpu applies to --backend modal", "run.gpu_type"),
    ({"backend": "modal", "image": IMAGE, "gpus": "0,1"}, "--gpu-ids applies to --backend local", "run.gpus"),
    ({"image": IMAGE}, "--image applies only with --backend", "run.image"),
])
def test_the_mcp_plan_tool_refuses_a_field_for_another_backend(fields, flag, named, tmp_path):
    from launcher.mcp_server import tools
    from launcher.mcp_server.calls import flat, input_named
    from launcher.mcp_server.requests import RunRequest

    fields = {k: str(tmp_path / "out") if v == "OUT" else v for k, v in fields.items()}
    request = RunRequest(preset="wan21-t2v-1.3b", dataset=str(EXAMPLE_DATASET), **fields)
    with pytest.raises(UserError) as refused:
        tools.plan(request)
    assert refused.value.problems[0].startswith(flag)
    assert input_named(refused.value.problems[0], flat({"run": request})) == named
