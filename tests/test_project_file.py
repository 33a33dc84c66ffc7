"""The project file (lora-gym.toml), `launcher init`, `launcher config`, and the defaults every command takes from
them: flag, then project file, then environment, then built-in default. The promised command itself, typed in a
folder made by `launcher init`, runs a container in tests/test_local_backend.py."""

from __future__ import annotations

import re
import shutil
import tomllib

import pytest
from conftest import EXAMPLE_DATASET

from launcher.backends import backend_names
from launcher.cli.main import main
from launcher.cli.project_cmd import TEMPLATE
from launcher.core import projectfile
from launcher.core.errors import UserError

NOWHERE = "unix:///nonexistent/lora-gym-test.sock"


@pytest.fixture
def project(tmp_path, monkeypatch, capsys):
    """A folder made by `launcher init`, the example dataset copied into its dataset/; the cwd is that folder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LORA_GYM_REGISTRY", raising=False)
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    assert main(["init"]) == 0
    capsys.readouterr()
    shutil.copytree(EXAMPLE_DATASET, tmp_path / "dataset", dirs_exist_ok=True)
    return tmp_path


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def config_rows(out: str) -> dict[str, tuple[str, str]]:
    """`launcher config` as {key: (value, source)}."""
    rows = {}
    for line in out.splitlines():
        key, value, *source = re.split(r"\s{2,}", line.strip()) + [""]
        rows[key] = (value, source[0])
    return rows


# --- the file ---------------------------------------------------------------------------------------------

def test_template_is_a_valid_project_file_with_every_key_documented(tmp_path):
    uncommented = re.sub(r"^# ([a-z_]+ = )", r"\1", TEMPLATE, flags=re.MULTILINE)
    (tmp_path / projectfile.FILE_NAME).write_text(uncommented)
    loaded = projectfile.load(tmp_path / projectfile.FILE_NAME)
    assert set(loaded.top) == set(projectfile.TOP_KEYS)
    assert {name: set(table) for name, table in loaded.backends.items()} == \
        {name: set(keys) for name, keys in projectfile.BACKEND_KEYS.items()}
    assert set(projectfile.BACKEND_KEYS) == set(backend_names())  # a table for every backend, and no other
    assert loaded.top["dataset"] == str(tmp_path / "dataset")  # paths are relative to the file's folder


@pytest.mark.parametrize(("text", "expected"), [
    ('datset = "d"\n', r"unknown key datset \(did you mean 'dataset'\?\): valid keys are backend, backends, "
                       r"dataset, gpu_ids, gpu_memory, output, registry$"),
    ('[backends.runpod]\ngpus = "H100"\n', r"unknown key backends.runpod.gpus \(did you mean 'gpu'\?\): valid keys "
                                           r"in \[backends.runpod\] are gpu, image, max_cost, max_hours, volume$"),
    ("[backends.lamda]\n", r"unknown table \[backends.lamda\] .*: valid ones are \[backends.local\], "),
    ('backend = "lcal"\n', r"backend = 'lcal' is not a backend \(did you mean 'local'\?\): use one of local, modal"),
    ("gpu_ids = 0\n", r"gpu_ids must be a string, not 0$"),
    ("[backends.skypilot]\nspot = 1\n", r"backends.skypilot.spot must be true or false, not 1$"),
    ("output = = 1\n", r"not valid TOML \(.*line 1.*\): fix it"),
], ids=["typo", "table key", "table", "backend name", "type", "bool", "syntax"])
def test_bad_files_are_one_error_line_each_naming_file_and_key(tmp_path, text, expected):
    path = tmp_path / projectfile.FILE_NAME
    path.write_text(text)
    with pytest.raises(UserError) as caught:
        projectfile.load(path)
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].startswith(f"{path}: ") and re.search(expected, caught.value.problems[0])


def test_every_problem_of_a_file_is_reported_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / projectfile.FILE_NAME).write_text('datset = "d"\nbackend = "lcal"\n[backends.modal]\ngpux = "H100"\n')
    code, out, err = cli(capsys, "config")
    assert code == 2 and out == ""
    assert [line.split(": ", 2)[2][:20] for line in err.splitlines()] == \
        ["unknown key datset (", "unknown key backends", "backend = 'lcal' is "]


def test_found_from_a_subfolder_with_paths_from_its_own_folder(project, capsys, monkeypatch):
    (project / "notes" / "deep").mkdir(parents=True)
    monkeypatch.chdir(project / "notes" / "deep")
    code, out, _ = cli(capsys, "config")
    rows = config_rows(out)
    assert code == 0 and rows["project file"][0] == str(project / projectfile.FILE_NAME)
    assert rows["dataset"] == (str(project / "dataset"), f"project file {project}/lora-gym.toml (dataset)")


# --- init -------------------------------------------------------------------------------------------------

def test_init_makes_the_file_and_dataset_folder_and_never_overwrites(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "init")
    assert code == 0 and "wrote lora-gym.toml" in out and "wrote dataset/README.txt" in out
    assert (tmp_path / "lora-gym.toml").read_text() == TEMPLATE
    assert "caption" in (tmp_path / "dataset" / "README.txt").read_text()
    (tmp_path / "lora-gym.toml").write_text('dataset = "mine"\n')
    (tmp_path / "dataset" / "README.txt").unlink()
    code, out, _ = cli(capsys, "init")
    assert code == 0 and "kept lora-gym.toml (it exists)" in out and "kept dataset/ (it exists" in out
    assert (tmp_path / "lora-gym.toml").read_text() == 'dataset = "mine"\n'
    assert list((tmp_path / "dataset").iterdir()) == []  # nothing added to the user's own folder


def test_the_dataset_readme_passes_the_dataset_check(project, capsys):
    code, out, err = cli(capsys, "run", "--preset", "wan21-t2v-1.3b", "--dry-run")
    assert code == 0 and "Plan for wan21-t2v-1.3b" in out, err


# --- resolution: flag, project file, environment, built-in default ------------------------------------------

def test_config_says_where_each_value_comes_from(project, capsys, monkeypatch):
    (project / "lora-gym.toml").write_text(
        'dataset = "dataset"\noutput = "runs"\nregistry = "ghcr.io/team"\ngpu_memory = 24\n'
        '[backends.runpod]\ngpu = "NVIDIA H100 80GB HBM3"\nmax_hours = 6\n')
    rows = config_rows(cli(capsys, "config", "--backend", "runpod", "--output", "/tmp/elsewhere")[1])
    assert rows["dataset"] == (str(project / "dataset"), f"project file {project}/lora-gym.toml (dataset)")
    assert rows["output"] == ("/tmp/elsewhere", "flag") and rows["backend"] == ("runpod", "flag")
    assert rows["gpu"][0] == "NVIDIA H100 80GB HBM3" and rows["gpu"][1].endswith("([backends.runpod] gpu)")
    assert rows["max_hours"][0] == "6.0" and rows["gpu_memory"][0] == "24"
    assert rows["gpu_ids"] == ("all", "built-in default") and rows["volume"] == ("(none)", "built-in default")
    assert rows["registry"] == ("ghcr.io/team", f"project file {project}/lora-gym.toml (registry)")
    monkeypatch.setenv("LORA_GYM_REGISTRY", "registry.example.com/me")
    rows = config_rows(cli(capsys, "config")[1])
    assert rows["registry"] == ("registry.example.com/me", "environment (LORA_GYM_REGISTRY)")
    assert rows["gpu"] == ("(none)", "built-in default")  # the runpod table applies to runpod only


def test_project_values_go_through_the_options_own_checks(project, capsys):
    (project / "lora-gym.toml").write_text("gpu_memory = 4\n")
    code, out, err = cli(capsys, "run", "--preset", "wan21-t2v-1.3b", "--dry-run")
    assert code == 2 and out == ""
    assert err == f"error: {project}/lora-gym.toml (gpu_memory): Invalid value for '--gpu-memory': 4 is not in " \
                  "the range 8<=x<=1024.\n"


def test_run_takes_dataset_output_and_registry_from_the_file_and_flags_win(project, capsys, tmp_path):
    (project / "lora-gym.toml").write_text('output = "runs"\nregistry = "ghcr.io/team"\n'
                                           '[backends.local]\ngpu_ids = "none"\n')
    code, out, _ = cli(capsys, "run", "--preset", "wan21-t2v-1.3b", "--backend", "local", "--dry-run")
    assert code == 0
    assert f"-v {project}/dataset:/dataset:ro" in out and f"-v {project}/runs:/output:rw" in out
    assert "--gpus" not in out and out.rstrip().endswith("ghcr.io/team/lora-gym-wan21:0.1.0")
    other = tmp_path / "other"
    shutil.copytree(EXAMPLE_DATASET, other)
    code, out, _ = cli(capsys, "run", "--preset", "wan21-t2v-1.3b", "--backend", "local", "--dry-run",
                       "--dataset", str(other), "--image", "ghcr.io/me/other:1")
    assert f"-v {other}:/dataset:ro" in out and out.rstrip().endswith("ghcr.io/me/other:1")


def test_without_a_project_file_dataset_is_dot_dataset_when_it_exists(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, "run", "--preset", "wan21-t2v-1.3b", "--dry-run")
    assert code == 2 and err.startswith("error: no dataset: pass --dataset DIR, put the files in ./dataset")
    shutil.copytree(EXAMPLE_DATASET, tmp_path / "dataset")
    code, out, _ = cli(capsys, "run", "--preset", "wan21-t2v-1.3b", "--dry-run")
    assert code == 0 and "Dataset: 4 images, 2 videos" in out


def test_dataset_check_caption_and_sweep_take_the_project_dataset(project, capsys):
    code, out, _ = cli(capsys, "caption", "--anchor", "zorbix", "--dry-run")
    assert code == 0 and "all 6 files have a caption" in out
    code, out, _ = cli(capsys, "dataset", "check", "--preset", "wan21-t2v-1.3b", "--headers-only")
    assert code == 0 and out.startswith(f"dataset {project}/dataset, preset wan21-t2v-1.3b")
    code, out, _ = cli(capsys, "sweep", "--preset", "wan21-t2v-1.3b", "--grid", "train.seed=1,2", "--dry-run")
    assert code == 0 and "2 runs" in out


# --- the expert and the backend when not given ----------------------------------------------------------------

def test_wan22_without_expert_trains_both_and_says_so_first(project, capsys):
    code, out, err = cli(capsys, "run", "--preset", "wan22-t2v-lightning", "--dry-run")
    assert code == 0 and out.startswith("Plan for wan22-t2v-lightning, expert both")
    assert err.splitlines()[0].startswith("note: wan22-t2v-lightning is a Wan 2.2 preset and --expert was not "
                                          "given: training both experts (high-noise expert: composition, motion")
    assert "identity/likeness" in err
    code, out, err = cli(capsys, "run", "--preset", "wan22-t2v-lightning", "--expert", "low", "--dry-run")
    assert code == 0 and "expert low" in out.splitlines()[0] and err == ""


def test_expert_help_and_presets_say_which_expert_learns_what(capsys):
    code, out, _ = cli(capsys, "run", "--help")
    flat = "".join(out.split())  # click wraps the help, at a hyphen too
    assert "low:thelow-noiseexpert(latesteps:detail,texture,identity/likeness)" in flat
    assert "[defaultforWan2.2:both]" in flat
    for path in sorted((EXAMPLE_DATASET.parents[1] / "presets").glob("wan22-*.toml")):
        text = path.read_text()
        assert "learns detail, texture" in text and "--expert high --dataset" not in text, path
        assert "both experts (high: motion/layout, low: detail/identity)" in tomllib.loads(text)["description"]


def test_no_backend_no_engine_names_what_is_missing_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOCKER_HOST", NOWHERE)
    code, out, err = cli(capsys, "run", "--preset", "wan22-t2v-lightning", "--expert", "high")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: cannot start the run: no dataset (put the files in ./dataset, or pass --dataset "
                          f"DIR); no backend (cannot reach Docker or Podman at {NOWHERE}")
    assert "or pass --backend modal, runpod or skypilot); `launcher init` writes these defaults to lora-gym.toml" in err
    assert len(err) <= 400  # one readable line, whatever the engine said
    assert list(tmp_path.iterdir()) == []


# --- installing the backends --------------------------------------------------------------------------------

def test_every_install_hint_names_an_extra_of_this_clone_and_make_backends_installs_them():
    root = EXAMPLE_DATASET.parents[1]
    extras = set(tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    sources = {path: path.read_text() for path in (root / "launcher").rglob("*.py")}
    named = {m for text in sources.values()
             for m in re.findall(r"""(?:install_command\(|extras\.require\()['"](\w+)['"]""", text)}
    assert {"dataset", "mcp", "report"} <= named <= extras
    # A hint never names the package on PyPI (lora-gym is not there): only extras.py's fallback, for an install
    # that is not a clone, does.
    assert [p.name for p, text in sources.items() if "pip install 'lora-gym[" in text] == ["extras.py"]
    makefile = (root / "Makefile").read_text()
    assert "$(QUIET_PIP) -e '.[local,modal,runpod]'" in makefile and {"local", "modal", "runpod"} <= extras
    assert ".venv-skypilot/bin/pip install --quiet -e '.[skypilot]'" in makefile  # click<8.2: a venv of its own
