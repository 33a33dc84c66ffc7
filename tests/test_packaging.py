"""A non-editable install has every data file the code reads, and building the package warns about nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from conftest import ROOT, clean_env

DATA_FILES = ("launcher/backends/runpod_gpu_types.json", "launcher/contract/musubi-tuner-30c658c4f4b0.json",
              "launcher/presets_data/wan22-t2v-lightning.toml", "launcher/caption/prompts/character.md",
              "lora_gym_entrypoint/README.md", "launcher/publish/comfyui_nodes.json",
              "launcher/publish/lora_format.json", "launcher/mcp_server/guide.md")


def test_the_wheel_holds_the_data_files_and_the_build_is_quiet(tmp_path):
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    source = tmp_path / "src"
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(tmp_path / "dist"), str(source)], capture_output=True, text=True, env=clean_env())
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("lora_gym-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(DATA_FILES) <= names, set(DATA_FILES) - names
    assert "Warning" not in build.stdout + build.stderr, build.stderr
