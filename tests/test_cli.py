"""The `launcher` CLI: presets list/show/cp and run --dry-run in both formats."""

from __future__ import annotations

import json
import shlex
import tomllib

import pytest
from conftest import EXAMPLE_DATASET

from launcher.cli.main import main
from launcher.core.presets import load_preset, preset_names, read_source

PRESETS = ["wan22-t2v-lightning", "wan22-t2v-vanilla", "wan22-i2v-lightning", "wan22-i2v-vanilla",
           "wan21-t2v-14b", "wan21-t2v-1.3b", "wan21-i2v-720p", "wan21-i2v-480p"]


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_registry_is_the_presets_directory():
    assert sorted(preset_names()) == sorted(PRESETS)


def test_presets_list(capsys):
    code, out, _ = run_cli(capsys, "presets", "list")
    assert code == 0
    rows = out.strip().splitlines()[1:]
    assert sorted(r.split()[0] for r in rows) == sorted(PRESETS)
    assert any(r.startswith("wan21-t2v-1.3b") and "24 GB" in r for r in rows)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_opens_with_a_comment_block_with_a_run_line_and_override(name):
    text = read_source(name)[1]
    header = text.split("\n\n", 1)[0]
    assert header.startswith(f"# {name}:") and "launcher run --preset " + name in header and "--set" in header


@pytest.mark.parametrize("name", PRESETS)
def test_show_prints_resolved_values_that_load_back_identically(name, capsys, tmp_path):
    code, out, _ = run_cli(capsys, "presets", "show", name)
    assert code == 0
    resolved = tomllib.loads(out)
    assert resolved["train"]["seed"] == 42 and resolved["train"]["optimizer_type"] == "adamw8bit"
    copy = tmp_path / "resolved.toml"
    copy.write_text(out)
    assert load_preset(str(copy)).content_hash == load_preset(name).content_hash


def test_show_applies_overrides(capsys):
    code, out, _ = run_cli(capsys, "presets", "show", "wan22-t2v-lightning", "--set", "experts.low.learning_rate=5e-5")
    assert code == 0 and tomllib.loads(out)["experts"]["low"]["learning_rate"] == 5e-5


def test_cp_copies_into_a_folder_and_the_copy_runs(capsys, tmp_path):
    code, out, _ = run_cli(capsys, "presets", "cp", "wan21-t2v-1.3b", str(tmp_path))
    copy = tmp_path / "wan21-t2v-1.3b.toml"
    assert code == 0 and copy.read_text() == read_source("wan21-t2v-1.3b")[1]
    code, out, _ = run_cli(capsys, "run", "--preset", str(copy), "--dataset", str(EXAMPLE_DATASET), "--dry-run")
    assert code == 0 and "wan21-t2v-1.3b" in out


def test_dry_run_json_has_steps_with_complete_argv_and_dataset_config(capsys):
    code, out, _ = run_cli(capsys, "run", "--preset", "wan22-i2v-lightning", "--expert", "both", "--dataset",
                           str(EXAMPLE_DATASET), "--dry-run", "--format", "json", "--set", "train.seed=7")
    assert code == 0
    plan = json.loads(out)
    assert [s["name"] for s in plan["steps"]][:2] == ["cache-latents", "cache-text-encoder"]
    assert all(isinstance(s["argv"], list) and all(isinstance(a, str) for a in s["argv"]) for s in plan["steps"])
    train = next(s["argv"] for s in plan["steps"] if s["name"] == "train-low")
    assert train[:2] == ["accelerate", "launch"] and train[train.index("--seed") + 1] == "7"
    config = tomllib.loads(plan["dataset_config"])
    assert config["general"]["caption_extension"] == ".txt" and len(config["datasets"]) == 3
    assert plan["overrides"] == ["train.seed=7"] and len(plan["preset_sha256"]) == 64


def test_dry_run_text_is_copy_pasteable_shell(capsys):
    code, out, _ = run_cli(capsys, "run", "--preset", "wan21-t2v-14b", "--dataset", str(EXAMPLE_DATASET), "--dry-run")
    assert code == 0
    train = out.split("3. train", 1)[1].split("\n  4. ", 1)[0]
    argv = shlex.split(train.replace(" \\\n", " "))  # one command, its lines joined by the shell's `\`
    assert argv[:2] == ["accelerate", "launch"] and argv[argv.index("--mixed_precision", 3) + 1] == "bf16"
    assert train.count(" \\\n") > 5 and "$RUN/dataset.toml" in argv  # RUN: the run folder, set in the header


def test_help_pages_end_with_examples(capsys):
    for args in (["--help"], ["run", "--help"], ["presets", "--help"]):
        code, out, _ = run_cli(capsys, *args)
        assert code == 0 and "Examples:" in out
