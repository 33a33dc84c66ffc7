"""`launcher publish`: the real huggingface_hub client (a subprocess, HF_ENDPOINT at the Hub double of
tests/fakes/fake_hub.py) puts a run the entrypoint made with the test doubles on the Hub (the musubi double writes
musubi's LoRA keys and shapes for the tiny DiT it trained on): every file arrives byte for byte, the LoRAs as they
are load by ComfyUI's key rules and diffusers' own reader, the card's metadata is what the Hub reads, a second
publish commits nothing, an interrupted one resumes without sending a file twice; bad RUN, bad --repo and a missing
token are one `error:` line each; the token is never printed. HF_HUB_DISABLE_XET=1 keeps the client on the LFS
protocol the double speaks."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import EXAMPLE_DATASET, clean_env
from fakes.fake_hub import FakeHub
from safetensors.numpy import save_file
from test_entrypoint import Container

TOKEN = "hf_writer_publish_test_123"
REPO = "me/zorbix-wan22"


def tiny_lora(path: Path, seed: int, dim: int = 8, ffn: int = 12, rank: int = 4) -> None:
    """A small LoRA in musubi's format (lora_unet_<module>.lora_down/lora_up/alpha), different per seed."""
    rng, tensors = np.random.default_rng(seed), {}
    shapes = {**{f"self_attn_{x}": (dim, dim) for x in "qkvo"}, **{f"cross_attn_{x}": (dim, dim) for x in "qkvo"},
              "ffn_0": (ffn, dim), "ffn_2": (dim, ffn)}
    for block in range(2):
        for name, (out, inp) in shapes.items():
            module = f"lora_unet_blocks_{block}_{name}"
            tensors[f"{module}.lora_down.weight"] = rng.standard_normal((rank, inp)).astype(np.float16)
            tensors[f"{module}.lora_up.weight"] = rng.standard_normal((out, rank)).astype(np.float16)
            tensors[f"{module}.alpha"] = np.array(rank, dtype=np.float16)
    save_file(tensors, str(path), metadata={"ss_network_module": "networks.lora_wan"})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("publish")
    shutil.copytree(EXAMPLE_DATASET, tmp / "dataset")
    box = Container(tmp, tmp / "dataset")
    box.stock_weights("wan22-t2v-lightning", "both")
    result = box.run(box.env("wan22-t2v-lightning", "both",
                             LORA_GYM_SET="train.max_train_epochs=4 train.save_every_n_epochs=2"))
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    [folder] = box.runs()
    return folder


@pytest.fixture
def hub():
    with FakeHub({}, token=TOKEN, writable={"me"}) as fake:
        yield fake


def publish(hub: FakeHub | None, *args: str, token: str | None = TOKEN, home: Path | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = clean_env(HF_ENDPOINT=hub.url if hub else "http://127.0.0.1:9", HF_HUB_DISABLE_XET="1",
                    HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HOME=str(home or Path(cwd or ".") / "no-hf-home"))
    if token:
        env["HF_TOKEN"] = token
    done = subprocess.run([sys.executable, "-m", "launcher.cli.main", "publish", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)
    assert TOKEN not in done.stdout + done.stderr  # never printed, whatever happened
    return done


def one_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert all(w in done.stderr for w in words), done.stderr
    assert "Traceback" not in done.stderr


def front_matter(readme: bytes) -> dict:
    text = readme.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_publish_uploads_every_file_and_the_card_the_hub_reads(run_dir, hub, tmp_path):
    done = publish(hub, str(run_dir), "--repo", REPO, "--trigger", "zorbix", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    files, record = hub.repos[REPO], json.loads((run_dir / "run.json").read_text())
    finals = [o["path"] for o in record["outputs"] if not o["path"].endswith("02.safetensors")]
    assert sorted(finals) == ["wan22-t2v-lightning-high.safetensors", "wan22-t2v-lightning-low.safetensors"]
    for name in finals:  # musubi's files, unconverted
        assert files[name] == (run_dir / name).read_bytes()
    assert not any(p.startswith("checkpoints/") for p in files)  # only with --checkpoints
    videos = [v["path"] for v in record["samples"]["videos"]]
    assert videos and all(files[v] == (run_dir / v).read_bytes() for v in videos)
    assert {"README.md", "comfyui/workflow-api.json", "comfyui/workflow.json", "loss.csv", "loss.png",
            "lora-gym.json"} <= set(files)
    assert files["loss.png"].startswith(b"\x89PNG")
    history = json.loads((run_dir / "progress.json").read_text())["trainings"]
    assert files["loss.csv"].decode().count("\n") == 1 + sum(len(t["history"]) for t in history.values())
    meta = front_matter(files["README.md"])
    assert meta["base_model"] == "Wan-AI/Wan2.2-T2V-A14B" and meta["base_model_relation"] == "adapter"
    assert (meta["pipeline_tag"], meta["license"], meta["library_name"]) == ("text-to-video", "apache-2.0",
                                                                              "diffusers")
    assert meta["instance_prompt"] == "zorbix" and {"lora", "wan2.2", "lightning"} <= set(meta["tags"])
    assert {w["output"]["url"] for w in meta["widget"]} == set(videos)  # the gallery: the last epoch's samples
    card = files["README.md"].decode()
    for text in ("LoraLoaderModelOnly", "train.max_train_epochs=4", "train.save_every_n_epochs=2", "4 images",
                 "2 videos", "high: 12 steps", "at step 2", "wan2.2_t2v_high_noise_14B_fp16.safetensors",
                 "load_into_transformer_2=True", "![training loss](loss.png)", "checked every key"):
        assert text in card, text
    assert hub.validated == [files["README.md"].decode()]  # create_commit had the Hub check the YAML
    settings = json.loads(files["lora-gym.json"])
    assert settings["preset"]["overrides"] == record["preset"]["overrides"] and settings["experts"] == ["high", "low"]
    api = json.loads(files["comfyui/workflow-api.json"])
    assert any(n["inputs"].get("lora_name") == "wan22-t2v-lightning-low.safetensors" for n in api.values())
    assert json.loads(files["comfyui/workflow.json"])["version"] == 0.4
    assert f"published {len(files) - 1} of {len(files) - 1} files" in done.stdout  # all but .gitattributes


def test_the_published_loras_load_in_comfyui_and_diffusers_as_they_are(run_dir, hub, tmp_path):
    from safetensors.numpy import load_file
    from test_publish_lora_format import comfy_loads

    from launcher import loracheck

    assert publish(hub, str(run_dir), "--repo", REPO, cwd=tmp_path).returncode == 0
    checks = json.loads((run_dir / "run.json").read_text())["lora_check"]
    for expert in ("high", "low"):
        name = f"wan22-t2v-lightning-{expert}.safetensors"
        (tmp_path / name).write_bytes(hub.repos[REPO][name])
        lora = load_file(str(tmp_path / name))
        dit = {k: tuple(v) for k, v in loracheck.dit_weights(checks[f"train-{expert}"]["dit"]).items()}
        patched, problems = comfy_loads(lora, dit)
        assert problems == [] and len(patched) == len(lora) // 3
        torch = pytest.importorskip("torch")
        conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
        converted = conversion._convert_musubi_wan_lora_to_diffusers({k: torch.from_numpy(v) for k, v in lora.items()})
        assert len(converted) == len(lora) * 2 // 3


def test_a_second_publish_commits_nothing_and_a_change_commits_only_that_file(run_dir, hub, tmp_path):
    assert publish(hub, str(run_dir), "--repo", REPO, cwd=tmp_path).returncode == 0
    commits, puts = len(hub.commit_log), dict(hub.lfs_puts)
    hub.reset()
    again = publish(hub, str(run_dir / "run.json"), "--repo", REPO, cwd=tmp_path)
    assert again.returncode == 0 and "nothing changed" in again.stdout, again.stderr
    assert len(hub.commit_log) == commits and hub.lfs_puts == puts
    assert not [u for m, u, _ in hub.requests if m == "POST" and ("/commit/" in u or "/preupload/" in u)]
    changed = publish(hub, str(run_dir), "--repo", REPO, "--trigger", "zorbix", cwd=tmp_path)
    assert changed.returncode == 0, changed.stderr
    assert hub.commit_log[-1]["paths"] == ["README.md"] and hub.lfs_puts == puts


def test_an_interrupted_publish_resumes_without_sending_a_file_twice(run_dir, hub, tmp_path):
    hub.fail_next_commit = True  # the files went up, then the commit failed (the Hub's 500)
    one_error(publish(hub, str(run_dir), "--repo", REPO, cwd=tmp_path), "publishing to me/zorbix-wan22 failed",
              "500", "run the same publish again")
    sent = dict(hub.lfs_puts)
    assert sent and all(n == 1 for n in sent.values())
    resumed = publish(hub, str(run_dir), "--repo", REPO, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert hub.lfs_puts == sent  # the Hub had every LFS object: none uploaded again
    assert "wan22-t2v-lightning-high.safetensors" in hub.repos[REPO]


def test_the_token_from_the_hubs_login_file(run_dir, hub, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "token").write_text(TOKEN)  # where `hf auth login` saves it (HF_HOME/token)
    done = publish(hub, str(run_dir), "--repo", REPO, token=None, home=tmp_path / "hf", cwd=tmp_path)
    assert done.returncode == 0, done.stderr


def test_no_token_is_one_error_line_and_no_request(run_dir, hub, tmp_path):
    one_error(publish(hub, str(run_dir), "--repo", REPO, token=None, cwd=tmp_path), "HF_TOKEN", "hf auth login")
    assert hub.requests == []


@pytest.mark.parametrize(("token", "repo", "words"), [("hf_wrong_token_456", REPO, ("401", "refused the token")),
                                                      (TOKEN, "someone-else/x", ("403", "may not write"))])
def test_a_token_the_hub_refuses_is_one_error_line(run_dir, hub, tmp_path, token, repo, words):
    done = publish(hub, str(run_dir), "--repo", repo, token=token, cwd=tmp_path)
    one_error(done, *words)
    assert token not in done.stderr


@pytest.mark.parametrize("repo", ["zorbix", "me/zor bix", "a/b/c", "me/-x", "me/x--y"])
def test_a_bad_repo_id_is_one_error_line(run_dir, repo, tmp_path):
    one_error(publish(None, str(run_dir), "--repo", repo, cwd=tmp_path), "--repo", "user/name")


def test_bad_runs_are_one_error_line_each(run_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    one_error(publish(None, str(tmp_path / "empty"), "--repo", REPO, cwd=tmp_path), "holds no run.json")
    one_error(publish(None, "no-such-run-20260101", "--repo", REPO, cwd=tmp_path), "no run 'no-such-run-20260101'")
    one_error(publish(None, "../x y", "--repo", REPO, cwd=tmp_path), "neither a run folder")
    failed = tmp_path / "failed"
    shutil.copytree(run_dir, failed)
    record = json.loads((failed / "run.json").read_text())
    (failed / "run.json").write_text(json.dumps(record | {"status": "failed"}))
    one_error(publish(None, str(failed), "--repo", REPO, "--dry-run", cwd=tmp_path), "did not succeed")
    (failed / "run.json").write_text(json.dumps(record))
    (failed / "wan22-t2v-lightning-low.safetensors").write_bytes(b"not the run's file")
    one_error(publish(None, str(failed), "--repo", REPO, "--dry-run", cwd=tmp_path), "not the file the run wrote")
    tiny_lora(failed / "wan22-t2v-lightning-low.safetensors", 0)
    bad = {"lora_unet_blocks_0_ffn_0.lora_down.weight": np.zeros((4, 8), np.float16)}  # no up, no alpha
    save_file(bad, str(failed / "wan22-t2v-lightning-low.safetensors"))
    low = next(o for o in record["outputs"] if o["path"] == "wan22-t2v-lightning-low.safetensors")
    data = (failed / low["path"]).read_bytes()
    low |= {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (failed / "run.json").write_text(json.dumps(record))
    one_error(publish(None, str(failed), "--repo", REPO, "--dry-run", cwd=tmp_path), "not a musubi-tuner LoRA",
              "lack one of")


def test_private_makes_a_private_repo_and_refuses_a_public_one(run_dir, hub, tmp_path):
    assert publish(hub, str(run_dir), "--repo", "me/secret", "--private", cwd=tmp_path).returncode == 0
    assert hub.private["me/secret"] is True
    assert publish(hub, str(run_dir), "--repo", REPO, cwd=tmp_path).returncode == 0
    commits = len(hub.commit_log)
    one_error(publish(hub, str(run_dir), "--repo", REPO, "--private", cwd=tmp_path), "is public", "drop --private")
    assert len(hub.commit_log) == commits


def test_dry_run_lists_files_and_front_matter_without_token_or_network(run_dir, tmp_path):
    done = publish(None, str(run_dir), "--repo", REPO, "--checkpoints", "--dry-run", token=None, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    size = (run_dir / "wan22-t2v-lightning-high.safetensors").stat().st_size
    assert "wan22-t2v-lightning-high.safetensors" in done.stdout and f"{size / 1000:.1f} KB" in done.stdout
    assert "checkpoints/wan22-t2v-lightning-low-000002.safetensors" in done.stdout
    assert "base_model: Wan-AI/Wan2.2-T2V-A14B" in done.stdout and "base_model_relation: adapter" in done.stdout
    assert "no token read, nothing sent" in done.stdout


def split_by_expert(run_dir: Path, target: Path, layout: str, pair: bool) -> None:
    """The run as Modal (<id>/high, <id>/low) or RunPod (<id>-high, <id>-low) leave it: one folder per expert.
    `pair`: the low folder sampled both LoRAs and the high one deferred to it (entrypoints/samples.py pair_turn);
    else each folder sampled alone (runs from before the pair samples)."""
    for expert in ("high", "low"):
        folder = target / run_dir.name / expert if layout == "modal" else target / f"{run_dir.name}-{expert}"
        shutil.copytree(run_dir, folder)
        record = json.loads((folder / "run.json").read_text())
        record["outputs"] = [o for o in record["outputs"] if f"-{expert}" in o["path"]]
        record |= {"expert": expert, "run_id": expert if layout == "modal" else folder.name,
                   "training": {f"train-{expert}": record["training"][f"train-{expert}"]}}
        if pair and expert == "high":
            record["samples"] |= {"status": "deferred", "reason": "the run in ../low samples the pair", "videos": []}
            shutil.rmtree(folder / "samples")
        (folder / "run.json").write_text(json.dumps(record))


@pytest.mark.parametrize(("layout", "pair"), [("modal", True), ("runpod", True), ("modal", False)])
def test_a_run_id_finds_the_pulled_folders_of_both_experts(run_dir, tmp_path, layout, pair):
    from launcher import runs

    runs.save({"run_id": run_dir.name, "backend": layout, "preset": "wan22-t2v-lightning"})
    split_by_expert(run_dir, tmp_path, layout, pair)
    done = publish(None, run_dir.name, "--repo", REPO, "--dry-run", token=None, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    videos = ["samples/e000004/prompt-1.mp4"] if pair else ["samples/high/e000004/prompt-1.mp4",
                                                            "samples/low/e000004/prompt-1.mp4"]
    for name in ("wan22-t2v-lightning-high.safetensors", "wan22-t2v-lightning-low.safetensors", *videos):
        assert name in done.stdout
    assert pair == ("samples/low/" not in done.stdout)
    (tmp_path / "elsewhere").mkdir()
    one_error(publish(None, run_dir.name, "--repo", REPO, "--dry-run", cwd=tmp_path / "elsewhere"), "not pulled into",
              "launcher pull")


def test_a_wan21_image_to_video_run_gets_its_own_base_task_and_workflow(tmp_path):
    from launcher.core.presets import load_preset
    from launcher.publish import bundle, source

    tiny_lora(tmp_path / "wan21-i2v-480p.safetensors", 3)
    data = (tmp_path / "wan21-i2v-480p.safetensors").read_bytes()
    record = {"run_id": "wan21-i2v-480p-20260101-000000", "status": "succeeded", "expert": None,
              "settings": load_preset("wan21-i2v-480p").preset.model_dump(mode="json"),
              "preset": {"name": "wan21-i2v-480p", "origin": "wan21-i2v-480p", "sha256": "ab" * 32, "overrides": []},
              "outputs": [{"path": "wan21-i2v-480p.safetensors", "size": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}], "samples": None}
    (tmp_path / "run.json").write_text(json.dumps(record))
    built = bundle.build(source.load(str(tmp_path)), REPO, "https://hub.test", None, False)
    files = {e.repo_path: e for e in built.entries}
    assert set(files) == {"README.md", "wan21-i2v-480p.safetensors", "comfyui/workflow-api.json",
                          "comfyui/workflow.json", "lora-gym.json"}  # no samples, no progress.json: no loss
    meta = front_matter(files["README.md"].read())
    assert (meta["base_model"], meta["pipeline_tag"]) == ("Wan-AI/Wan2.1-I2V-14B-480P", "image-to-video")
    assert "instance_prompt" not in meta and "widget" not in meta
    card = files["README.md"].read().decode()
    assert "Samples were off" in card and "No loss recorded" in card
    assert "ComfyUI/input/" in card and "clip_vision_h.safetensors" in card
    assert "KSamplerAdvanced" not in card and "WanImageToVideoPipeline" in card
    api = json.loads(files["comfyui/workflow-api.json"].read())
    sampler = next(n for n in api.values() if n["class_type"] == "KSampler")
    assert (sampler["inputs"]["sampler_name"], sampler["inputs"]["steps"], sampler["inputs"]["cfg"]) == ("uni_pc", 40,
                                                                                                         5.0)


def test_publish_help_imports_no_heavy_sdk():
    from test_imports import DRIVER, HEAVY

    done = subprocess.run([sys.executable, "-c", DRIVER.format(heavy=HEAVY, argv=["publish", "--help"])],
                          capture_output=True, text=True, env=clean_env())
    assert done.returncode == 0 and "--dry-run" in done.stdout, done.stderr
    assert json.loads(done.stderr.rsplit("LOADED=", 1)[1]) == []  # huggingface_hub loads only when it publishes
