"""`make image-*` / `make push-*` command lines, built as data without any container engine."""

from __future__ import annotations

import json

import pytest

from launcher import contract, imagebuild
from launcher.weights import lockfile


@pytest.fixture
def lock_dir(tmp_path):
    entry = {"kind": "weight", "repo": "a/b", "path": "w.safetensors", "revision": "1" * 40, "size": 1,
             "sha256": "2" * 64, "tasks": ["t2v"]}
    (tmp_path / "weights.lock.json").write_text(json.dumps({"family": "wan22", "lock_version": 1, "files": [entry]}))
    return tmp_path


@pytest.mark.parametrize("flavor, tasks, registry, tag", [
    ("full", "all", "", "lora-gym-wan22:0.1.0"),
    ("slim", "all", "ghcr.io/me/", "ghcr.io/me/lora-gym-wan22:0.1.0-slim"),
    ("full", "t2v", "r.io", "r.io/lora-gym-wan22:0.1.0-t2v")])
def test_tags(flavor, tasks, registry, tag):
    assert imagebuild.image_tag("wan22", flavor, tasks, registry, version="0.1.0") == tag


def test_build_command_carries_labels_contexts_and_secret_files_only(lock_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SuperSecret")
    req = imagebuild.BuildRequest("wan22", flavor="slim", tasks="t2v", engine="podman", lock_dir=str(lock_dir),
                                  musubi_dir="/src/musubi", network="host")
    argv = imagebuild.build_command(req, token_file="/tmp/x/hf_token")
    joined = " ".join(argv)
    assert argv[:2] == ["podman", "build"] and f"lock={lock_dir}" in argv and "musubi=/src/musubi" in argv
    for arg in ("FAMILY=wan22", "FLAVOR=slim", "TASKS=t2v", f"CONTRACT_VERSION={contract.CONTRACT_VERSION}",
                f"MUSUBI_COMMIT={contract.musubi_commit()}",
                f"WEIGHTS_LOCK_DIGEST={lockfile.digest(lockfile.read(lock_dir / 'weights.lock.json'))}"):
        assert arg in argv
    assert "id=hf_token,src=/tmp/x/hf_token" in argv and "hf_SuperSecret" not in joined


def test_docker_uses_buildx_and_loads_the_image(lock_dir):
    argv = imagebuild.build_command(imagebuild.BuildRequest("wan22", lock_dir=str(lock_dir)))
    assert argv[:4] == ["docker", "buildx", "build", "--load"] and argv[-1] == str(imagebuild.ROOT)


def test_missing_lock_is_one_line_with_the_fix(tmp_path, capsys):
    code = imagebuild.main(["build", "--family", "wan21", "--lock-dir", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "make lock-weights" in err[0]


def test_dry_run_prints_the_command_and_never_the_token(lock_dir, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_SuperSecret")
    assert imagebuild.main(["build", "--family", "wan22", "--lock-dir", str(lock_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "docker buildx build" in out and "hf_SuperSecret" not in out and "id=hf_token" in out


def test_push_needs_a_registry(capsys):
    assert imagebuild.main(["push", "--family", "wan21"]) == 2
    assert "REGISTRY=" in capsys.readouterr().err


UNREACHABLE_HUB = "http://127.0.0.1:9"  # nothing listens on the discard port


def test_an_existing_lock_is_never_re_pinned(lock_dir, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_HUB)  # any Hub request would fail
    before = (lock_dir / "weights.lock.json").read_bytes()
    req = imagebuild.BuildRequest("wan22", lock_dir=str(lock_dir))
    assert imagebuild.ensure_lock(req) == lock_dir / "weights.lock.json"
    assert (lock_dir / "weights.lock.json").read_bytes() == before


def test_a_lock_that_cannot_be_pinned_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE_HUB)
    monkeypatch.setenv("HF_TOKEN", "hf_NeverPrinted")
    code = imagebuild.main(["build", "--family", "wan21", "--lock-dir", str(tmp_path), "--engine", "podman"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot pin the weights lock from the Hub")
    assert "hf_NeverPrinted" not in err[0] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cap", ["nan", "inf", "0", "-1", "0.001"])
def test_a_layer_cap_out_of_range_is_refused_first(cap, lock_dir, capsys):
    code = imagebuild.main(["build", "--family", "wan22", "--lock-dir", str(lock_dir), "--max-layer-gb", cap])
    assert code == 2 and "MAX_LAYER_GB" in capsys.readouterr().err


def test_the_cap_reaches_the_build_as_bytes(lock_dir):
    argv = imagebuild.build_command(imagebuild.BuildRequest("wan22", lock_dir=str(lock_dir), max_layer_gb=4.5))
    assert "MAX_LAYER_BYTES=4500000000" in argv
