"""Two runs over one shared cache without a lock: every entry lands whole, by content key (entrypoints/cacheshare.py).

The musubi test double writes musubi's cache file names as real safetensors files, slowly (FAKE_MUSUBI_WRITE_S),
and FAKE_MUSUBI_MEET makes the two runs' cache steps overlap for certain. A reader thread meanwhile reads every
cache file and marker in the shared folders with the safetensors library itself, as a training elsewhere would.
The same scenario with the entrypoint's old in-place writes shows the reader catching half-written files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest
import safetensors
from test_entrypoint import Container

from launcher.core.errors import UserError
from launcher.core.plan import Step
from lora_gym_entrypoint import cachelock, cacheshare

PRESET = "wan22-t2v-vanilla"  # one family, two experts: the caches of `--expert both` on two machines
OVERLAP = {"LORA_GYM_CACHE_LOCK": "none", "FAKE_MUSUBI_WRITE_S": "0.05", "LORA_GYM_SET": "samples.enabled=false"}

# The entrypoint as it was before staging: the step writes straight into the shared folders, markers after.
IN_PLACE = '''
import contextlib, json, sys
from pathlib import Path
from lora_gym_entrypoint import cacheshare, main

class InPlace:
    def __init__(self, step):
        self.step, self.argv = step, step.argv
    def publish(self):
        for marker in self.step.markers:
            Path(marker).write_text(json.dumps({"at": "then"}))

cacheshare.staging = lambda step, *args: contextlib.nullcontext(InPlace(step))
sys.exit(main.main())
'''


class Reader(threading.Thread):
    """Reads the shared cache folders over and over; keeps every partial file, vanished file, and marker that
    vouches for a file that is not there."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.stop = root, threading.Event()
        self.reads, self.partial, self.vanished, self.unvouched = 0, set(), set(), set()

    def run(self) -> None:
        while not self.stop.is_set():
            for folder in sorted(self.root.glob("datasets/*")):
                self.check(folder)
            time.sleep(0.001)

    def check(self, folder: Path) -> None:
        for path in folder.glob("*.safetensors"):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                self.vanished.add(path.name)  # a rename never lets a published name go missing
                continue
            self.reads += 1
            try:
                safetensors.deserialize(data)
            except safetensors.SafetensorError:
                self.partial.add(path.name)
        for marker in folder.glob(".lora-gym-*.ok"):
            try:
                files = json.loads(marker.read_text()).get("files", [])
            except (OSError, ValueError):
                self.partial.add(marker.name)
                continue
            self.unvouched |= {name for name in files if not (folder / name).is_file()}


def contents(cache: Path) -> dict[str, bytes]:
    """Every file of the content-keyed folders, by path; markers without their time."""
    found = {}
    for path in sorted(cache.glob("datasets/*/*")):
        data = path.read_bytes()
        found[str(path.relative_to(cache))] = json.loads(data)["files"] if path.suffix == ".ok" else data
    return found


def two_at_once(box: Container, argv: list[str]) -> tuple[list[subprocess.CompletedProcess], Reader]:
    """`high` and `low` started together over one cache, with the reader running until both have ended."""
    reader = Reader(box.cache)
    reader.start()
    procs = [subprocess.Popen(argv, env=box.env(PRESET, expert, LORA_GYM_RUN_ID=expert, FAKE_MUSUBI_MEET=str(
        box.root / "meet"), **OVERLAP), text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for expert in ("high", "low")]
    outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    reader.stop.set()
    reader.join()
    return [subprocess.CompletedProcess(p.args, p.returncode, out) for p, out in zip(procs, outputs, strict=True)], \
        reader


@pytest.fixture
def box(tmp_path, dataset) -> Container:
    box = Container(tmp_path, dataset)
    box.stock_weights(PRESET, "both")
    return box


def reference(box: Container, tmp_path: Path) -> dict[str, bytes]:
    """What one run alone leaves in the cache."""
    alone = Container(tmp_path / "alone", box.dataset)
    alone.weights = box.weights
    result = alone.run(alone.env(PRESET, "both", LORA_GYM_STAGE="cache"))
    assert result.returncode == 0, result.stdout + result.stderr
    return contents(alone.cache)


def test_two_runs_without_a_lock_publish_every_entry_whole(box, tmp_path):
    expected = reference(box, tmp_path)
    results, reader = two_at_once(box, [sys.executable, "-m", "lora_gym_entrypoint"])
    assert [r.returncode for r in results] == [0, 0], [r.stdout for r in results]
    scripts = [c["script"] for c in box.calls()]
    assert scripts.count("wan_cache_latents") == 2 and scripts.count("wan_cache_text_encoder_outputs") == 2
    assert reader.reads > 0 and not reader.partial and not reader.vanished and not reader.unvouched
    assert contents(box.cache) == expected  # no entry lost, none changed: what one run alone leaves
    items = sum(name.endswith("_wan.safetensors") for name in expected)
    for expert, result in zip(("high", "low"), results, strict=True):  # and each training read them all
        assert f"[train-{expert}] fake musubi: {items} cached items" in result.stdout
    assert not list((box.cache / "staging").iterdir()) and not (box.cache / "locks").exists()


def test_the_reader_catches_the_old_in_place_writes(box, tmp_path):
    script = tmp_path / "in_place.py"
    script.write_text(IN_PLACE)
    results, reader = two_at_once(box, [sys.executable, str(script)])
    scripts = [c["script"] for c in box.calls()]
    assert scripts.count("wan_cache_latents") == 2  # the same overlap as above
    assert reader.partial, "the reader never saw a half-written file: it could not tell in-place writes apart"


# --- the parts ------------------------------------------------------------------------------------------

def marker_step(cache: Path, argv: tuple[str, ...] = ("true",)) -> Step:
    return Step("cache-latents", argv, (f"{cache}/datasets/k1/.lora-gym-latents.ok",
                                        f"{cache}/datasets/k2/.lora-gym-latents.ok"))


def test_a_marker_counts_only_with_every_file_it_names(tmp_path):
    marker = tmp_path / "k" / ".lora-gym-latents.ok"
    marker.parent.mkdir()
    assert not cacheshare.done([str(marker)])
    marker.write_text(json.dumps({"at": "then", "files": ["a_wan.safetensors"]}))
    assert not cacheshare.done([str(marker)])  # e.g. a bucket mount that uploaded the marker first
    (marker.parent / "a_wan.safetensors").write_bytes(b"x")
    assert cacheshare.done([str(marker)])
    marker.write_text(json.dumps({"at": "then"}))  # a marker from before the lists
    assert cacheshare.done([str(marker)])
    marker.write_text("")  # cut short: not ours to trust
    assert not cacheshare.done([str(marker)])


def test_staging_redirects_the_outputs_and_publishes_them_whole(tmp_path):
    cache = tmp_path / "cache"
    config = tmp_path / "dataset.toml"
    config.write_text(f'[general]\nbatch_size = 1\n\n[[datasets]]\nimage_directory = "/d"\n'
                      f'cache_directory = "{cache}/datasets/k1"\nresolution = [1280, 720]\n\n'
                      f'[[datasets]]\nvideo_directory = "/v"\ncache_directory = "{cache}/datasets/k2"\n')
    step = marker_step(cache, ("python", "x.py", "--dataset_config", str(config), "--output",
                               f"{cache}/datasets/k2/model.safetensors", "--vae", f"{cache}/weights/vae"))
    owner = cachelock.new_owner("run")
    with cacheshare.staging(step, str(cache), "run-1", owner, 3600, print) as stage:
        home = cache / "staging" / "run-1.cache-latents"
        assert stage.argv[:2] == ("python", "x.py") and stage.argv[-2:] == ("--vae", f"{cache}/weights/vae")
        assert stage.argv[5] == f"{home}/datasets/k2/model.safetensors"
        staged = tomllib.loads(Path(stage.argv[3]).read_text())
        original = tomllib.loads(config.read_text())
        assert [d.pop("cache_directory") for d in staged["datasets"]] == [f"{home}/datasets/k1",
                                                                          f"{home}/datasets/k2"]
        assert [d.pop("cache_directory") for d in original["datasets"]] and staged == original
        for key in ("k1", "k2"):
            (home / "datasets" / key).mkdir(parents=True)
            (home / "datasets" / key / f"{key}_wan.safetensors").write_text(key)
        stage.publish()
    assert (cache / "datasets/k1/k1_wan.safetensors").read_text() == "k1"
    assert json.loads((cache / "datasets/k2/.lora-gym-latents.ok").read_text())["files"] == ["k2_wan.safetensors"]
    assert cacheshare.done(step.markers) and not home.exists()


def test_a_run_whose_staging_folder_was_taken_for_abandoned_does_not_publish(tmp_path):
    cache = tmp_path / "cache"
    step = marker_step(cache)
    with cacheshare.staging(step, str(cache), "run-1", cachelock.new_owner("run"), 3600, print) as stage:
        (stage.home / "datasets" / "k1").mkdir(parents=True)
        (stage.home / "datasets" / "k1" / "a_wan.safetensors").write_text("a")
        (stage.home / cacheshare.OWNER).unlink()  # another run's sweep
        with pytest.raises(UserError, match="raise LORA_GYM_LOCK_TIMEOUT"):
            stage.publish()
    assert not (cache / "datasets").exists()


def test_the_staging_folders_of_vanished_runs_are_swept(tmp_path):
    root = tmp_path / "staging"
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive, silent, bare = (root / name for name in ("dead", "alive", "silent", "bare"))
    for home, owner in ((dead, cachelock.new_owner("dead") | {"pid": int(gone.stdout)}),
                        (alive, cachelock.new_owner("alive")),
                        (silent, cachelock.new_owner("far") | {"machine": "elsewhere"})):
        home.mkdir(parents=True)
        (home / cacheshare.OWNER).write_text(json.dumps(owner))
    bare.mkdir()
    hour_ago = time.time() - 3600
    os.utime(silent / cacheshare.OWNER, (hour_ago, hour_ago))
    os.utime(bare, (hour_ago, hour_ago))
    lines = []
    cacheshare.sweep(root, 600, lines.append)
    assert sorted(p.name for p in root.iterdir()) == ["alive"]
    assert len(lines) == 3 and all(line.startswith("removing the staging folder") for line in lines)
