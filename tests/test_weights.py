"""The weights lock and the downloader, against a loopback fake of the Hub driven by the real huggingface_hub."""

from __future__ import annotations

import ast
import hashlib
import json
import random
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import EXAMPLE_DATASET, ROOT, clean_env
from fakes.fake_hub import FakeHub

from launcher.core.errors import UserError
from launcher.core.job import prepare, read_lock
from launcher.core.plan import ContainerPaths, WeightFile
from launcher.weights import fetch, lockfile
from launcher.weights.__main__ import main as weights_cli
from lora_gym_entrypoint.weights import ensure_weights

FETCH_PY = ROOT / "launcher" / "weights" / "fetch.py"
T5_REPO, T5_SUB = lockfile.T5_TOKENIZER
CLIP_REPO, CLIP_SUB = lockfile.CLIP_TOKENIZER
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model", "nested/extra.json")
WAN22_T2V_DIT = "split_files/diffusion_models/wan2.2_t2v_high_noise_14B_fp16.safetensors"
WAN22_I2V_DIT = "split_files/diffusion_models/wan2.2_i2v_high_noise_14B_fp16.safetensors"


def hub_repos() -> dict[str, dict[str, bytes]]:
    """Every file both families name, with small random content, plus files no preset needs."""
    rng, repos = random.Random(7), {}
    for family in lockfile.FAMILIES:
        for item in lockfile.skeleton(family):
            files = repos.setdefault(item["repo"], {"README.md": b"# model card\n"})
            if item["kind"] == "weight":
                files[item["path"]] = rng.randbytes(rng.randint(3000, 9000))
            else:
                for name in TOKENIZER_FILES:
                    files[f"{item['subfolder']}/{name}"] = f'{{"{name}": {rng.random()}}}'.encode()
                files[f"{item['subfolder']}-other/decoy.json"] = b"{}"
    return repos


@pytest.fixture
def hub():
    with FakeHub(hub_repos()) as fake:
        yield fake


@pytest.fixture(scope="module")
def wan22_lock() -> dict:
    # Resolved once: every test's fresh fake hub serves the same files and commits (hub_repos is deterministic).
    with FakeHub(hub_repos()) as fake:
        return lockfile.resolve("wan22", endpoint=fake.url)


@pytest.fixture
def lock(wan22_lock) -> dict:
    return json.loads(json.dumps(wan22_lock))


def entry(doc: dict, repo: str, path: str) -> dict:
    return next(e for e in doc["files"] if e["repo"] == repo and e["path"] == path)


def weights_of(doc: dict) -> list[dict]:
    return [e for e in doc["files"] if e["kind"] == "weight"]


# --- skeleton ----------------------------------------------------------------------------------------------

def test_wan22_skeleton_lists_each_file_with_the_tasks_that_need_it():
    items = lockfile.skeleton("wan22")
    weights = {f"{i['repo']}:{i['path']}": i["tasks"] for i in items if i["kind"] == "weight"}
    assert len(weights) == 10  # VAE, T5, 4 DiTs, 4 Lightning LoRAs
    assert weights["Comfy-Org/Wan_2.1_ComfyUI_repackaged:split_files/vae/wan_2.1_vae.safetensors"] == ["i2v", "t2v"]
    assert weights[f"Comfy-Org/Wan_2.2_ComfyUI_Repackaged:{WAN22_T2V_DIT}"] == ["t2v"]
    assert weights[f"Comfy-Org/Wan_2.2_ComfyUI_Repackaged:{WAN22_I2V_DIT}"] == ["i2v"]
    assert sum("Lightning" in ref for ref in weights) == 4
    assert not any("clip" in ref for ref in weights)
    tokenizers = [i for i in items if i["kind"] == "tokenizer"]
    assert tokenizers == [{"kind": "tokenizer", "repo": T5_REPO, "subfolder": T5_SUB, "tasks": ["i2v", "t2v"]}]


def test_wan21_skeleton_has_clip_weights_and_tokenizer_for_i2v_only():
    items = lockfile.skeleton("wan21")
    weights = {i["path"]: i["tasks"] for i in items if i["kind"] == "weight"}
    assert weights["models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"] == ["i2v"]
    assert weights["split_files/diffusion_models/wan2.1_t2v_1.3B_bf16.safetensors"] == ["t2v"]
    assert weights["models_t5_umt5-xxl-enc-bf16.pth"] == ["i2v", "t2v"]
    tokenizers = {(i["repo"], i["subfolder"]): i["tasks"] for i in items if i["kind"] == "tokenizer"}
    assert tokenizers == {(T5_REPO, T5_SUB): ["i2v", "t2v"], (CLIP_REPO, CLIP_SUB): ["i2v"]}


def test_unknown_family_is_a_user_error():
    with pytest.raises(UserError, match="unknown family 'wan30'"):
        lockfile.skeleton("wan30")


# --- resolve -----------------------------------------------------------------------------------------------

def test_resolve_pins_every_file_by_commit_size_and_sha256(hub, lock):
    assert lock["family"] == "wan22" and lock["lock_version"] == 1
    assert lockfile.validate(lock) is lock
    for item in lock["files"]:
        content = hub.repos[item["repo"]][item["path"]]
        assert item["revision"] == hub.commits[item["repo"]]
        assert item["size"] == len(content) and item["sha256"] == hashlib.sha256(content).hexdigest()
    assert len(weights_of(lock)) == 10
    # The tokenizer folder is expanded to its files (recursively, non-LFS ones hashed by download), nothing else.
    tokenizer_paths = sorted(e["path"] for e in lock["files"] if e["kind"] == "tokenizer")
    assert tokenizer_paths == sorted(f"{T5_SUB}/{name}" for name in TOKENIZER_FILES)
    assert not any(e["path"].endswith(("README.md", "decoy.json")) for e in lock["files"])
    assert lock["files"] == lockfile.sort_entries(lock["files"])
    assert lockfile.digest(lockfile.resolve("wan22", endpoint=hub.url)) == lockfile.digest(lock)


def test_resolve_names_a_file_missing_on_the_hub(hub):
    del hub.repos["Comfy-Org/Wan_2.2_ComfyUI_Repackaged"][WAN22_I2V_DIT]
    with pytest.raises(UserError, match=f"not on the Hub .*{WAN22_I2V_DIT}"):
        lockfile.resolve("wan22", endpoint=hub.url)


# --- the document ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field,value,message", [
    ("revision", "main", "40-hex commit revision"),
    ("sha256", "abc", "64-hex sha256"),
    ("size", "12", "integer size"),
    ("size", True, "integer size"),
    ("kind", "model", "kind 'model'"),
    ("tasks", ["v2v"], "tasks"),
])
def test_validate_names_the_bad_entry_and_the_fix(lock, field, value, message):
    bad = json.loads(json.dumps(lock))
    bad["files"][3][field] = value
    name = f"{bad['files'][3]['repo']}:{bad['files'][3]['path']}"
    with pytest.raises(UserError) as error:
        lockfile.validate(bad)
    assert len(error.value.problems) == 1
    assert name in str(error.value) and message in str(error.value)
    assert "run make lock-weights FAMILY=wan22" in str(error.value)


def test_validate_rejects_duplicates_and_foreign_documents(lock):
    doubled = dict(lock, files=lock["files"] + lock["files"][:1])
    with pytest.raises(UserError, match="listed twice"):
        lockfile.validate(doubled)
    with pytest.raises(UserError, match="lock-weights FAMILY=<wan21|wan22>"):
        lockfile.validate({"files": []})
    with pytest.raises(UserError, match="no files list"):
        lockfile.validate([])


def test_write_is_atomic_refuses_to_overwrite_and_reads_back(tmp_path, lock):
    path = tmp_path / "images" / "wan22" / "weights.lock.json"
    lockfile.write(path, lock)
    assert lockfile.read(path) == lock
    assert [p.name for p in path.parent.iterdir()] == ["weights.lock.json"]  # no temporary file left
    with pytest.raises(UserError, match="exists: pass --force"):
        lockfile.write(path, lock)
    lockfile.write(path, lock, overwrite=True)
    assert read_lock(path)[f"Comfy-Org/Wan_2.2_ComfyUI_Repackaged:{WAN22_I2V_DIT}"]["size"] > 0
    with pytest.raises(UserError, match="not found: run make lock-weights"):
        lockfile.read(tmp_path / "missing.json")


def test_select_keeps_only_what_the_tasks_need(lock):
    t2v = {e["path"] for e in lockfile.select(lock, {"t2v"})}
    assert WAN22_T2V_DIT in t2v and WAN22_I2V_DIT not in t2v
    assert "split_files/vae/wan_2.1_vae.safetensors" in t2v and f"{T5_SUB}/tokenizer.json" in t2v
    assert len(lockfile.select(lock, {"t2v", "i2v"})) == len(lock["files"])
    with pytest.raises(UserError, match="unknown tasks"):
        lockfile.select(lock, {"v2v"})


# --- fetching weights --------------------------------------------------------------------------------------

def test_fetch_verifies_and_a_second_fetch_downloads_nothing(tmp_path, hub, lock):
    item = entry(lock, "Comfy-Org/Wan_2.2_ComfyUI_Repackaged", WAN22_T2V_DIT)
    assert fetch.fetch_entry(item, tmp_path, tmp_path / "hf", endpoint=hub.url) is True
    final = tmp_path / item["repo"] / item["path"]
    assert final.read_bytes() == hub.repos[item["repo"]][item["path"]]
    assert hub.served[f"{item['repo']}:{item['path']}"] == item["size"]
    hub.reset()
    assert fetch.fetch_entry(item, tmp_path, tmp_path / "hf", endpoint=hub.url) is False
    assert hub.requests == [] and sum(hub.served.values()) == 0


def test_corrupt_content_is_an_error_and_leaves_no_file(tmp_path, hub, lock):
    item = entry(lock, "Comfy-Org/Wan_2.2_ComfyUI_Repackaged", WAN22_T2V_DIT)
    hub.corrupt.add(f"{item['repo']}:{item['path']}")
    with pytest.raises(fetch.FetchError, match=f"sha256 mismatch: expected {item['sha256']}, got [0-9a-f]{{64}}"):
        fetch.fetch_entry(item, tmp_path, tmp_path / "hf", endpoint=hub.url)
    folder = tmp_path / item["repo"] / Path(item["path"]).parent
    assert list(folder.iterdir()) == []


def test_a_wrong_file_in_place_is_replaced(tmp_path, hub, lock):
    item = entry(lock, "Comfy-Org/Wan_2.2_ComfyUI_Repackaged", WAN22_T2V_DIT)
    final = tmp_path / item["repo"] / item["path"]
    final.parent.mkdir(parents=True)
    final.write_bytes(b"x" * item["size"])  # right size, wrong content
    assert fetch.fetch_entry(item, tmp_path, tmp_path / "hf", endpoint=hub.url) is True
    assert hashlib.sha256(final.read_bytes()).hexdigest() == item["sha256"]


def test_a_download_cut_mid_body_resumes_with_a_range_request(tmp_path, hub, lock, monkeypatch):
    import huggingface_hub.constants

    # huggingface_hub keeps what it received in whole chunks (10 MB); small chunks make the tiny test file resumable.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 512)
    item = entry(lock, "Comfy-Org/Wan_2.2_ComfyUI_Repackaged", WAN22_T2V_DIT)
    hub.fail_once(item["repo"], item["path"], after=2000)
    assert fetch.fetch_entry(item, tmp_path, tmp_path / "hf", endpoint=hub.url) is True
    first, second = hub.gets(item["repo"], item["path"])
    resumed_at = int(second.removeprefix("bytes=").rstrip("-"))
    assert first is None and 0 < resumed_at <= 2000
    assert hub.served[f"{item['repo']}:{item['path']}"] == 2000 + item["size"] - resumed_at
    assert (tmp_path / item["repo"] / item["path"]).read_bytes() == hub.repos[item["repo"]][item["path"]]


def test_a_partial_download_from_an_earlier_run_is_continued(tmp_path, hub, lock):
    item = entry(lock, "Comfy-Org/Wan_2.2_ComfyUI_Repackaged", WAN22_T2V_DIT)
    content = hub.repos[item["repo"]][item["path"]]
    part = tmp_path / item["repo"] / (item["path"] + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(content[:1234])  # what a container killed mid-download leaves behind
    assert fetch.fetch_entry(item, tmp_path, tmp_path / "hf", endpoint=hub.url) is True
    assert hub.gets(item["repo"], item["path"]) == ["bytes=1234-"]
    assert hub.served[f"{item['repo']}:{item['path']}"] == len(content) - 1234
    assert (tmp_path / item["repo"] / item["path"]).read_bytes() == content and not part.exists()


def test_token_from_the_build_secret_file(tmp_path, lock, monkeypatch):
    secret = tmp_path / "hf_token"
    secret.write_text("hf_secret123\n")
    monkeypatch.setattr(fetch, "TOKEN_SECRET", str(secret))
    assert fetch.read_token() == "hf_secret123"
    monkeypatch.setenv("HF_TOKEN", "hf_env456")
    assert fetch.read_token() == "hf_env456"
    with FakeHub(hub_repos(), token="hf_env456") as private:
        item = entry(lock, "Comfy-Org/Wan_2.2_ComfyUI_Repackaged", WAN22_T2V_DIT)
        assert fetch.fetch_entry(item, tmp_path, tmp_path / "hf", private.url, fetch.read_token()) is True
        with pytest.raises(fetch.FetchError) as error:
            fetch.fetch_entry(entry(lock, item["repo"], WAN22_I2V_DIT), tmp_path, tmp_path, private.url, "hf_bad789")
    assert "401" in str(error.value) and "hf_bad789" not in str(error.value)


# --- tokenizers --------------------------------------------------------------------------------------------

OFFLINE_LOAD = """
import json, os, sys
from huggingface_hub import hf_hub_download
repo, name, subfolder, refs_main = sys.argv[1:]
# What transformers' AutoTokenizer.from_pretrained(repo, subfolder=...) does: the default revision, "main".
found = hf_hub_download(repo, name, subfolder=subfolder)
os.unlink(refs_main)  # the control: without the ref, the same call must fail
try:
    hf_hub_download(repo, name, subfolder=subfolder)
    control = "loaded"
except Exception as exc:
    control = type(exc).__name__
print(json.dumps({"found": found, "control": control}))
"""


def _offline_load(hf_home: Path, name: str, refs_main: Path) -> dict:
    # HF_ENDPOINT points at a closed port: any attempt to go online would fail, not silently succeed.
    env = clean_env(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), HF_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run([sys.executable, "-c", OFFLINE_LOAD, T5_REPO, name, T5_SUB, str(refs_main)], env=env,
                            text=True, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tokenizers_load_offline_at_the_default_revision(tmp_path, hub, lock):
    hf_home = tmp_path / "hf"
    tokenizers = [e for e in lock["files"] if e["kind"] == "tokenizer"]
    for item in tokenizers:
        assert fetch.fetch_entry(item, tmp_path / "weights", hf_home, endpoint=hub.url) is True
    refs_main = hf_home / "hub" / f"models--{T5_REPO.replace('/', '--')}" / "refs" / "main"
    assert refs_main.read_text() == hub.commits[T5_REPO]  # verbatim: huggingface_hub does not strip it
    hub.reset()
    assert not any(fetch.fetch_entry(item, tmp_path / "weights", hf_home, endpoint=hub.url) for item in tokenizers)
    assert sum(hub.served.values()) == 0
    result = _offline_load(hf_home, "tokenizer.json", refs_main)
    loaded = Path(result["found"])
    assert hub.commits[T5_REPO] in loaded.parts
    assert loaded.read_bytes() == hub.repos[T5_REPO][f"{T5_SUB}/tokenizer.json"]
    assert result["control"] == "LocalEntryNotFoundError"


def test_a_corrupt_tokenizer_file_is_evicted_from_the_cache(tmp_path, hub, lock):
    item = entry(lock, T5_REPO, f"{T5_SUB}/spiece.model")
    hub.corrupt.add(f"{T5_REPO}:{item['path']}")
    with pytest.raises(fetch.FetchError, match="sha256 mismatch"):
        fetch.fetch_entry(item, tmp_path, tmp_path / "hf", endpoint=hub.url)
    storage = tmp_path / "hf" / "hub" / f"models--{T5_REPO.replace('/', '--')}"
    assert not [p for p in (storage / "blobs").iterdir() if not p.name.endswith(".lock")]
    assert not (storage / "snapshots" / item["revision"] / item["path"]).exists()
    assert not (storage / "refs" / "main").exists()


# --- fetch.py's command line -------------------------------------------------------------------------------

def test_fetch_py_imports_only_the_standard_library_and_huggingface_hub():
    imported = set()
    for node in ast.walk(ast.parse(FETCH_PY.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"huggingface_hub"}


@pytest.fixture
def lock_file(tmp_path, lock, hub, monkeypatch) -> Path:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return lockfile.write(tmp_path / "weights.lock.json", lock)


def _all(lock_file: Path, dest: Path, tasks: str = "all") -> list[str]:
    return ["all", "--lock", str(lock_file), "--tasks", tasks, "--dest", str(dest), "--hf-home", str(dest / "hf")]


def test_all_fetches_every_needed_weight_then_nothing(tmp_path, lock, lock_file, hub, capsys):
    argv = ["all", "--lock", str(lock_file), "--tasks", "t2v", "--dest", str(tmp_path / "w"), "--hf-home",
            str(tmp_path / "hf")]
    t2v = [e for e in weights_of(lock) if "t2v" in e["tasks"]]
    assert fetch.main(argv) == 0
    out = capsys.readouterr().out
    assert f"[{len(t2v)}/{len(t2v)}]" in out and "downloaded and verified" in out
    assert f"downloaded {len(t2v)} files, 0.00 GB; already present 0" in out
    assert set(hub.served) == {f"{e['repo']}:{e['path']}" for e in t2v}
    hub.reset()
    assert fetch.main(argv) == 0
    assert f"downloaded 0 files, 0.00 GB; already present {len(t2v)}" in capsys.readouterr().out
    assert sum(hub.served.values()) == 0


def test_tokenizers_command_fills_the_hf_cache(tmp_path, lock_file, hub, capsys):
    argv = ["tokenizers", "--lock", str(lock_file), "--tasks", "all", "--hf-home", str(tmp_path / "hf")]
    assert fetch.main(argv) == 0
    assert f"downloaded {len(TOKENIZER_FILES)} files" in capsys.readouterr().out
    assert (tmp_path / "hf" / "hub" / f"models--{T5_REPO.replace('/', '--')}" / "refs" / "main").is_file()


def test_cli_failures_are_one_line_without_the_token(tmp_path, lock, lock_file):
    # A real process, with HF_HUB_OFFLINE=1 as in the image: fetch.py still goes online for locked files.
    with FakeHub(hub_repos(), token="hf_right") as private:
        def run(*args, token="hf_right"):
            env = clean_env(HF_ENDPOINT=private.url, HF_HUB_OFFLINE="1", HF_TOKEN=token)
            return subprocess.run([sys.executable, str(FETCH_PY), *args], env=env, text=True, capture_output=True,
                                  timeout=60)

        ok = run(*_all(lock_file, tmp_path / "w", "t2v"))
        assert ok.returncode == 0, ok.stderr
        denied = run(*_all(lock_file, tmp_path / "w", "i2v"), token="hf_wrong_token")
    assert denied.returncode == 2 and denied.stderr.startswith("error: ") and denied.stderr.count("\n") == 1
    assert "hf_wrong_token" not in denied.stdout + denied.stderr and "Traceback" not in denied.stderr


def test_an_unreadable_lock_is_one_error_line(tmp_path, capsys):
    assert fetch.main(_all(tmp_path / "nope.json", tmp_path / "w")) == 2
    assert capsys.readouterr().err.startswith("error: cannot read the weights lock")
    (tmp_path / "bad.json").write_text('{"files": [{"repo": "a/b", "path": "x"}]}')
    assert fetch.main(_all(tmp_path / "bad.json", tmp_path / "w")) == 2
    assert "entry a/b:x has no 40-hex commit revision" in capsys.readouterr().err


# --- ensure_weights (slim images) --------------------------------------------------------------------------

def _plan_weights(tmp_path: Path, lock_path: Path) -> tuple[WeightFile, ...]:
    paths = ContainerPaths(weights=str(tmp_path / "weights"))
    return prepare("wan22-t2v-lightning", "both", (), EXAMPLE_DATASET, run_id="x", paths=paths,
                   lock=read_lock(lock_path)).plan.weights


def test_ensure_weights_downloads_only_the_missing_files(tmp_path, lock_file, hub):
    weights, lines = _plan_weights(tmp_path, lock_file), []
    first = weights[0]
    Path(first.container_path).parent.mkdir(parents=True)
    Path(first.container_path).write_bytes(hub.repos[first.repo][first.path])
    report = ensure_weights(weights, str(lock_file), str(tmp_path / "hf"), lines.append)
    assert (report.downloaded, report.present) == (len(weights) - 1, 1)
    assert report.bytes == sum(w.size for w in weights[1:])
    assert hub.gets(first.repo, first.path) == [] and len(hub.served) == len(weights) - 1
    assert lines[-1] == f"weights: downloaded {len(weights) - 1} files, 0.00 GB; already present 1"
    hub.reset()
    assert ensure_weights(weights, str(lock_file), str(tmp_path / "hf"), lines.append) == (0, len(weights), 0)
    assert hub.requests == []


def test_ensure_weights_refuses_files_the_lock_does_not_pin(tmp_path, lock, lock_file, hub):
    weights = _plan_weights(tmp_path, lock_file)
    stranger = replace(weights[-1], path="split_files/loras/unpinned.safetensors",
                       container_path=f"{tmp_path}/weights/{weights[-1].repo}/split_files/loras/unpinned.safetensors")
    with pytest.raises(UserError, match="not in the weights lock .*unpinned.safetensors: nothing unpinned"):
        ensure_weights([*weights, stranger], str(lock_file), str(tmp_path / "hf"), print)
    assert hub.requests == []  # refused before downloading anything
    with pytest.raises(UserError, match="no weights lock"):
        ensure_weights(weights, None, str(tmp_path / "hf"), print)


# --- python -m launcher.weights ----------------------------------------------------------------------------

def test_weights_cli_prints_the_skeleton_and_writes_the_lock(tmp_path, hub, capsys, monkeypatch):
    assert weights_cli(["skeleton", "--family", "wan21"]) == 0
    assert {i["kind"] for i in json.loads(capsys.readouterr().out)} == {"weight", "tokenizer"}
    monkeypatch.setenv("HF_TOKEN", "hf_never_printed")
    out = tmp_path / "weights.lock.json"
    argv = ["lock", "--family", "wan21", "--out", str(out), "--endpoint", hub.url]
    assert weights_cli(argv) == 0
    printed = capsys.readouterr().out
    assert f"digest sha256:{lockfile.digest(lockfile.read(out))}" in printed
    assert weights_cli(argv) == 2
    assert "exists: pass --force" in capsys.readouterr().err
    assert weights_cli([*argv, "--force"]) == 0
    assert "hf_never_printed" not in printed + capsys.readouterr().out
