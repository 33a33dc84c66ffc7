"""Destinations that exist but cannot be written: one `error:` line before anything is written, not a traceback
halfway (and, in the entrypoint, not a run.json that says "running" forever).

Root writes through file permissions, so as root the folder is a read-only tmpfs mount (CI runs as root; the
mount needs CAP_SYS_ADMIN); otherwise it is a folder without write permission."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import FAKES

from launcher.cli.main import main as launcher_main
from lora_gym_entrypoint.main import main as entrypoint_main


@pytest.fixture
def read_only(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True,
                           text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def _one_error(capsys, code: int, *words: str) -> None:
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err and all(word in err for word in words), err


def test_presets_cp_into_a_read_only_folder(read_only, capsys):
    code = launcher_main(["presets", "cp", "wan21-t2v-14b", str(read_only / "mine.toml")])
    _one_error(capsys, code, str(read_only), "is not writable")


def test_dataset_prepare_into_a_read_only_folder(read_only, dataset, capsys):
    code = launcher_main(["dataset", "prepare", str(dataset), str(read_only / "copy")])
    _one_error(capsys, code, "is not writable")


@pytest.mark.parametrize("variable", ["LORA_GYM_OUTPUT_DIR", "LORA_GYM_CACHE_DIR"])
def test_entrypoint_with_a_read_only_volume(variable, read_only, tmp_path, dataset, capsys, monkeypatch):
    for name, value in {"LORA_GYM_PRESET": "wan21-t2v-14b", "LORA_GYM_DATASET_DIR": str(dataset),
                        "LORA_GYM_OUTPUT_DIR": str(tmp_path / "output"), "LORA_GYM_CACHE_DIR": str(tmp_path / "cache"),
                        "LORA_GYM_WEIGHTS_DIR": str(tmp_path / "weights"),
                        "LORA_GYM_MUSUBI_DIR": str(FAKES / "fake_musubi_tuner"), variable: str(read_only)}.items():
        monkeypatch.setenv(name, value)
    _one_error(capsys, entrypoint_main([]), variable, "is not writable")
    assert not (tmp_path / "output").exists() and not (tmp_path / "cache").exists()
