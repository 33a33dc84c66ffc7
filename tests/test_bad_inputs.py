"""Bad input table: each case gives exactly one `error:` line naming the problem and the fix,
exit code 2, no traceback, and nothing written anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, clean_env

from launcher.cli.main import main
from launcher.core.presets import read_source

RUN = ["run", "--dry-run"]
T2V22 = [*RUN, "--preset", "wan22-t2v-lightning", "--expert", "high"]
T2V21 = [*RUN, "--preset", "wan21-t2v-14b"]


def _caption(name: str, data: bytes):
    def setup(dataset: Path, tmp: Path):
        (dataset / "images" / name).write_bytes(data)
    return setup


def _remove_caption(dataset: Path, tmp: Path):
    (dataset / "images" / "zorbix_beach_wave.txt").unlink()


def _line_of(preset: str, text: str) -> int:
    return read_source(preset)[1].splitlines().index(text) + 1


def _user_preset(old: str, new: str):
    def setup(dataset: Path, tmp: Path):
        text = read_source("wan21-t2v-14b")[1]
        assert old in text
        (tmp / "mine.toml").write_text(text.replace(old, new))
    return setup


def _empty_dataset(dataset: Path, tmp: Path):
    (tmp / "empty").mkdir()


def _same_stem(dataset: Path, tmp: Path):
    (dataset / "images" / "zorbix_beach_wave.jpg").write_bytes(b"jpeg")


def _gif(dataset: Path, tmp: Path):
    (dataset / "videos" / "dance.gif").write_bytes(b"GIF89a")


def _existing_copy(dataset: Path, tmp: Path):
    (tmp / "mine.toml").write_text("# my own work\n")


# (id, argv with {dataset} and {tmp} placeholders, setup, words the error must contain)
CASES = [
    ("unknown preset", [*RUN, "--preset", "wan22-t2v-lightnin", "--expert", "high"], None,
     ["unknown preset", "did you mean 'wan22-t2v-lightning'", "presets list"]),
    ("expert on wan21", [*T2V21, "--expert", "high"], None, ["only for Wan 2.2", "drop --expert"]),
    ("project file typo", [*T2V21], lambda dataset, tmp: (tmp / "lora-gym.toml").write_text('datset = "d"\n'),
     ["lora-gym.toml: unknown key datset", "did you mean 'dataset'", "valid keys are backend, backends, dataset"]),
    ("bad expert choice", [*T2V21, "--expert", "medium"], None, ["'medium' is not one of", "--help"]),
    ("unknown override key", [*T2V21, "--set", "train.leraning_rate=1e-4"], None,
     ["unknown override key", "did you mean 'train.learning_rate'"]),
    ("override without =", [*T2V21, "--set", "train.learning_rate"], None, ["not key=value", "--set"]),
    ("wrong type", [*T2V21, "--set", "train.max_train_epochs=many"], None,
     ["train.max_train_epochs", "valid integer", "'many'"]),
    ("negative lr", [*T2V21, "--set", "train.learning_rate=-1e-4"], None, ["train.learning_rate", "greater than 0"]),
    ("dim zero", [*T2V22, "--set", "experts.high.network_dim=0"], None,
     ["experts.high.network_dim", "greater than 0"]),
    ("min >= max timestep", [*T2V22, "--set", "experts.low.min_timestep=900"], None,
     ["experts.low.min_timestep", "below max_timestep (875)"]),
    ("fractional timestep", [*T2V22, "--set", "experts.high.min_timestep=875.5"], None,
     ["experts.high.min_timestep", "valid integer"]),
    ("blocks_to_swap too high", [*T2V22, "--set", "train.blocks_to_swap=40"], None,
     ["train.blocks_to_swap", "at most 39"]),
    ("clip on t2v", [*T2V22, "--set", "model.clip=Wan-AI/Wan2.1-I2V-14B-720P:clip.pth"], None,
     ["model.clip", "does not use CLIP", "remove it"]),
    ("sage attention", [*T2V21, "--set", "train.attention=sage_attn"], None, ["train.attention", "'sdpa'"]),
    ("frames not 4N+1", [*T2V21, "--set", "dataset.videos.0.target_frames=20"], None, ["not 4N+1", "use 17"]),
    ("per-expert key on wan22", [*T2V22, "--set", "train.learning_rate=1e-4"], None,
     ["per expert", "experts.high.learning_rate"]),
    ("missing dataset", [*T2V21, "--dataset", "{tmp}/nope"], None, ["not found", "--dataset"]),
    ("empty dataset", [*T2V21, "--dataset", "{tmp}/empty"], _empty_dataset, ["no images or videos", ".txt"]),
    ("media without caption", T2V21, _remove_caption,
     ["images/zorbix_beach_wave.png has no caption", "write images/zorbix_beach_wave.txt"]),
    ("empty caption", T2V21, _caption("zorbix_beach_wave.txt", b"  \n"), ["is empty", "describe"]),
    ("non-utf8 caption", T2V21, _caption("zorbix_beach_wave.txt", "café".encode("latin-1")),
     ["not UTF-8", "re-save"]),
    ("same stem", T2V21, _same_stem, ["share the stem 'zorbix_beach_wave'", "rename"]),
    ("unsupported extension", T2V21, _gif, ["videos/dance.gif", "unsupported file type .gif", "convert"]),
    ("unknown key in user preset", [*RUN, "--preset", "{tmp}/mine.toml"],
     _user_preset("learning_rate = 8e-5", "leraning_rate = 8e-5"),
     ["mine.toml", "train.leraning_rate: unknown key", "did you mean 'learning_rate'"]),
    ("toml syntax error", [*RUN, "--preset", "{tmp}/mine.toml"], _user_preset("network_dim = 24", "network_dim = = 24"),
     ["mine.toml", "TOML syntax error", f"line {_line_of('wan21-t2v-14b', 'network_dim = 24')}"]),
    ("missing user preset", [*RUN, "--preset", "{tmp}/absent.toml"], None, ["not found", ".toml"]),
    ("copy onto existing file", ["presets", "cp", "wan21-t2v-14b", "{tmp}/mine.toml"], _existing_copy,
     ["already a file", "--force", "nothing was overwritten"]),
    # No engine here (DOCKER_HOST below), so no local backend: the line says so and names the other backends.
    ("run without backend", ["run", "--preset", "wan21-t2v-14b", "--dataset", "{dataset}"], None,
     ["no backend", "cannot reach Docker or Podman", "--backend modal, runpod or skypilot"]),
]


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_table_has_at_least_twenty_cases():
    assert len(CASES) >= 20


@pytest.mark.parametrize("argv, setup, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(argv, setup, words, tmp_path, dataset, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/lora-gym-test.sock")
    if setup:
        setup(dataset, tmp_path)
    args = [a.format(dataset=dataset, tmp=tmp_path) for a in argv]
    if "--dataset" not in args and args[0] == "run":
        args += ["--dataset", str(dataset)]
    before = _snapshot(tmp_path)
    code = main(args)
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    assert out == "" and "Traceback" not in err
    assert _snapshot(tmp_path) == before


def test_console_script_reports_bad_input_without_traceback(tmp_path):
    launcher = Path(sys.executable).parent / "launcher"
    result = subprocess.run([str(launcher), *T2V21, "--expert", "high", "--dataset", str(ROOT / "examples/dataset")],
                            capture_output=True, text=True, env=clean_env(), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == "" and os.listdir(tmp_path) == []
    assert result.stderr.startswith("error: --expert is only for Wan 2.2") and "Traceback" not in result.stderr
