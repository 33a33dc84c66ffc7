"""Every LoRA key lands: the check of a musubi-tuner LoRA against its DiT (launcher/loracheck.py), the metadata the
entrypoint adds (entrypoints/lora_verify.py), a run whose LoRA would load partially failing, and `launcher report`
checking again. The bad LoRAs are made by hand here; the good ones as musubi names them (networks/lora.py)."""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import tiny_wan
from safetensors import safe_open
from safetensors.numpy import save
from test_entrypoint import Container

from launcher import loracheck
from lora_gym_entrypoint import lora_verify, resume

# The nn.Linear modules of a Wan 2.1 T2V attention block (wan/modules/model.py): what musubi gives a LoRA module.
LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
           "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
SHAPES = {"ffn.0": [tiny_wan.FFN, tiny_wan.DIM], "ffn.2": [tiny_wan.DIM, tiny_wan.FFN]}
PROVENANCE = {"lora_gym.base_model": "Wan-AI/x:dit.safetensors@" + "a" * 40, "lora_gym.preset": "wan21-t2v-14b"}
WANT = loracheck.Want(4, 4.0, "networks.lora_wan", PROVENANCE)


def modules(blocks: int = tiny_wan.BLOCKS) -> dict[str, list[int]]:
    """DiT module path -> [out, in] of every module musubi trains in the tiny DiT."""
    return {f"blocks.{b}.{name}": SHAPES.get(name, [tiny_wan.DIM, tiny_wan.DIM]) for b in range(blocks)
            for name in LINEARS}


def write_lora(path: Path, dim: int = 4, alpha: float = 4.0, prefix: str = "lora_unet_", skip=(), shapes=None,
               metadata=None, blocks: int = tiny_wan.BLOCKS) -> Path:
    """A LoRA by hand: `prefix` + module path with dots as _, `.lora_down.weight` [dim, in], `.lora_up.weight`
    [out, dim], `.alpha`; `skip` leaves out keys (module or full key), `shapes` overrides a module's [out, in]."""
    rng, tensors = np.random.default_rng(0), {}
    for module, (out, inp) in modules(blocks).items():
        out, inp = (shapes or {}).get(module, (out, inp))
        name = prefix + module.replace(".", "_")
        for key, value in ((f"{name}.lora_down.weight", rng.standard_normal((dim, inp))),
                           (f"{name}.lora_up.weight", rng.standard_normal((out, dim))),
                           (f"{name}.alpha", np.array(alpha))):
            if module not in skip and key not in skip:
                tensors[key] = value.astype(np.float32)
    meta = {"ss_network_module": "networks.lora_wan", "ss_network_dim": str(dim), "ss_network_alpha": str(alpha),
            "ss_base_model_version": "wan", **PROVENANCE, **(metadata or {})}
    path.write_bytes(save(tensors, metadata=meta))
    return path


@pytest.fixture
def dit(tmp_path) -> Path:
    path = tmp_path / "dit.safetensors"
    tiny_wan.write_dit(path)
    return path


def problems(lora: Path, dit: Path | None, want: loracheck.Want = WANT) -> list[str]:
    return loracheck.check_file(lora, want, loracheck.dit_weights(dit) if dit else None)["problems"]


# --- the check ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_a_musubi_lora_passes_also_on_the_1_3b_files_prefixed_keys(tmp_path, prefix):
    dit = tmp_path / "dit.safetensors"
    tiny_wan.write_dit(dit, prefix=prefix)
    result = loracheck.check_file(write_lora(tmp_path / "good.safetensors"), WANT, loracheck.dit_weights(dit))
    assert result == {"path": "good.safetensors", "modules": 20, "keys": 60, "problems": []}


def test_a_dit_in_shards_is_read_across_all_of_them(tmp_path):
    tiny_wan.write_dit(tmp_path / "whole.safetensors")
    with safe_open(tmp_path / "whole.safetensors", "numpy") as whole:
        tensors = {key: whole.get_tensor(key) for key in whole.keys()}  # noqa: SIM118 - safe_open has no iterator
    keys = sorted(tensors)
    for number, part in enumerate((keys[::2], keys[1::2]), 1):
        (tmp_path / f"dit-{number:05d}-of-00002.safetensors").write_bytes(save({k: tensors[k] for k in part}))
    weights = loracheck.dit_weights(tmp_path / "dit-00001-of-00002.safetensors")
    assert weights == loracheck.dit_weights(tmp_path / "whole.safetensors") and len(weights) > 20
    assert problems(write_lora(tmp_path / "good.safetensors"), tmp_path / "dit-00001-of-00002.safetensors") == []


def test_a_lora_that_misses_keys_fails(tmp_path, dit):
    no_up = write_lora(tmp_path / "no-up.safetensors", skip=("lora_unet_blocks_0_self_attn_k.lora_up.weight",))
    [found] = problems(no_up, dit)
    assert found == "1 module(s) miss keys (e.g. lora_unet_blocks_0_self_attn_k without lora_up)"
    one_block = write_lora(tmp_path / "one-block.safetensors", blocks=1)
    [found] = problems(one_block, dit)
    assert found.startswith("10 of the DiT's 20 trained module(s) have no LoRA module (e.g. "
                            "lora_unet_blocks_1_cross_attn_k, lora_unet_blocks_1_cross_attn_o,")
    no_alpha = write_lora(tmp_path / "no-alpha.safetensors", skip=("lora_unet_blocks_1_ffn_2.alpha",))
    assert problems(no_alpha, None) == ["1 module(s) miss keys (e.g. lora_unet_blocks_1_ffn_2 without alpha)"]


def test_a_lora_with_the_wrong_shapes_fails(tmp_path, dit):
    lora = write_lora(tmp_path / "shapes.safetensors", shapes={"blocks.0.ffn.0": (tiny_wan.DIM, tiny_wan.FFN),
                                                              "blocks.1.self_attn.o": (tiny_wan.DIM, 12)})
    [found] = problems(lora, dit)
    assert found == ("2 module(s) do not fit their DiT weight (e.g. lora_unet_blocks_0_ffn_0 has lora_down [4, 32] "
                     "and lora_up [16, 4] for blocks.0.ffn.0.weight [32, 16], lora_unet_blocks_1_self_attn_o has "
                     "lora_down [4, 12] and lora_up [16, 4] for blocks.1.self_attn.o.weight [16, 16])")
    # Without the DiT, a lora_up whose rank is not lora_down's is still caught.
    with safe_open(lora, "numpy") as handle:
        tensors, meta = {key: handle.get_tensor(key) for key in handle.keys()}, handle.metadata()  # noqa: SIM118
    tensors["lora_unet_blocks_1_ffn_2.lora_up.weight"] = np.zeros((tiny_wan.DIM, 5), np.float32)
    lora.write_bytes(save(tensors, metadata=meta))
    assert problems(lora, None) == ["1 module(s) do not fit their DiT weight (e.g. lora_unet_blocks_1_ffn_2 has "
                                    "lora_down [4, 32] and lora_up [16, 5])"]


@pytest.mark.parametrize(("dit_prefix", "prefix"), [("model.diffusion_model.", "lora_unet_model_diffusion_model_"),
                                                    ("", "lora_transformer_")])
def test_a_lora_with_the_wrong_prefix_fails(tmp_path, dit_prefix, prefix):
    """Named after the 1.3B file's own keys (the prefix musubi strips before training), or another trainer's."""
    dit = tmp_path / "dit.safetensors"
    tiny_wan.write_dit(dit, prefix=dit_prefix)
    found = problems(write_lora(tmp_path / "prefix.safetensors", prefix=prefix), dit)
    assert found[0].startswith(f"20 of 20 module(s) name no weight of the DiT (e.g. {prefix}blocks_0_cross_attn_k, ")
    assert found[0].endswith("musubi names them lora_unet_<DiT key without 'model.diffusion_model.', dots as _>)")
    assert found[1].startswith("20 of the DiT's 20 trained module(s) have no LoRA module") and len(found) == 2


def test_diffusers_style_keys_are_no_musubi_lora(tmp_path, dit):
    """lightx2v's and diffusers' layout (`diffusion_model.<key>.lora_down.weight`) is not what musubi loads."""
    lora = tmp_path / "peft.safetensors"
    lora.write_bytes(save({f"diffusion_model.blocks.0.self_attn.q.lora_{r}.weight": np.zeros((4, 4), np.float32)
                           for r in ("down", "up")}, metadata={**PROVENANCE, "ss_network_module": "networks.lora_wan",
                                                               "ss_network_dim": "4", "ss_network_alpha": "4.0"}))
    found = problems(lora, dit)
    assert found[0].startswith("2 key(s) are not <module>.lora_down.weight, .lora_up.weight or .alpha (e.g. "
                               "diffusion_model.blocks.0.self_attn.q.lora_down.weight")
    assert "no LoRA module" in found[1]


def test_rank_alpha_and_metadata_must_be_what_the_plan_asked(tmp_path, dit):
    lora = write_lora(tmp_path / "r8.safetensors", dim=8, alpha=2.0, metadata={"lora_gym.preset": "other"})
    found = problems(lora, dit)
    assert found[0].startswith("20 module(s) have another rank than network_dim 4 (e.g. lora_unet_blocks_0_cross")
    assert found[1].startswith("20 module(s) have another alpha than network_alpha 4 (e.g. lora_unet_blocks_0_cross_"
                               "attn_k (2.0)")
    assert found[2] == ("its metadata has ss_network_dim='8' (the plan: 4), ss_network_alpha='2.0' (the plan: 4.0), "
                        "lora_gym.preset='other' (the plan: 'wan21-t2v-14b')")
    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(save({}, metadata=PROVENANCE))
    assert problems(bare, dit)[0].startswith("it has no LoRA module")


def test_a_cut_file_is_no_lora(tmp_path, dit):
    lora = write_lora(tmp_path / "cut.safetensors")
    lora.write_bytes(lora.read_bytes()[:-10])
    assert problems(lora, dit) == [f"the LoRA {lora} is cut short or has trailing bytes: it is not a whole file"]


def test_only_the_dit_header_is_read(tmp_path):
    """A 14B-sized DiT (40 blocks of 5120) whose 28 GB of data are a hole: the check needs only its header."""
    dim, ffn, tensors, offset = 5120, 13824, {}, 0
    for b in range(40):
        for name in LINEARS:
            shape = {"ffn.0": [ffn, dim], "ffn.2": [dim, ffn]}.get(name, [dim, dim])
            tensors[f"blocks.{b}.{name}.weight"] = {"dtype": "BF16", "shape": shape,
                                                    "data_offsets": [offset, offset + shape[0] * shape[1] * 2]}
            offset += shape[0] * shape[1] * 2
    blob = json.dumps(tensors).encode()
    big = tmp_path / "wan2.1_t2v_14B_bf16.safetensors"
    big.write_bytes(len(blob).to_bytes(8, "little") + blob)
    os.truncate(big, 8 + len(blob) + offset)
    assert big.stat().st_size > 25e9 and big.stat().st_blocks * 512 < 1e6  # sparse: nothing to read
    started = time.monotonic()
    weights = loracheck.dit_weights(big)
    assert len(loracheck.trained(weights)) == 400 and time.monotonic() - started < 2


# --- the metadata the entrypoint adds -------------------------------------------------------------------------

def _data(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[8 + int.from_bytes(raw[:8], "little"):]


def test_stamping_keeps_every_tensor_byte_for_byte(tmp_path, dit):
    (tmp_path / "run").mkdir()
    lora = write_lora(tmp_path / "run" / "x.safetensors", metadata={"lora_gym.base_model": "stale"})
    before, mode = _data(lora), lora.stat().st_mode
    with safe_open(lora, "numpy") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    assert lora_verify.stamp(lora, PROVENANCE) is True
    assert _data(lora) == before and lora.stat().st_mode == mode
    with safe_open(lora, "numpy") as handle:
        assert handle.metadata() == {"ss_network_module": "networks.lora_wan", "ss_network_dim": "4",
                                     "ss_network_alpha": "4.0", "ss_base_model_version": "wan", **PROVENANCE}
        assert all(np.array_equal(handle.get_tensor(k), v) for k, v in tensors.items()) and len(tensors) == 60
    # musubi's sshs_model_hash is the sha256 of this data (utils/model_utils.py), so it stays right.
    assert hashlib.sha256(_data(lora)).digest() == hashlib.sha256(before).digest()
    stamped = lora.stat().st_mtime_ns
    assert lora_verify.stamp(lora, PROVENANCE) is False and lora.stat().st_mtime_ns == stamped
    assert resume.final_lora(lora.parent, "x") == lora and resume.file_whole(lora)
    assert sorted(p.name for p in lora.parent.iterdir()) == ["x.safetensors"]
    assert problems(lora, dit) == []


def test_a_stamp_cut_short_leaves_the_lora_as_it_was(tmp_path, monkeypatch):
    lora = write_lora(tmp_path / "x.safetensors")
    before = lora.read_bytes()

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shutil, "copyfileobj", disk_full)
    with pytest.raises(OSError):
        lora_verify.stamp(lora, {"lora_gym.expert": "high"})
    assert lora.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]


# --- runs -----------------------------------------------------------------------------------------------------

PRESET = "wan21-t2v-1.3b"
QUICK = "samples.enabled=false train.max_train_epochs=4 train.save_every_n_epochs=2"


@pytest.fixture
def box(tmp_path, dataset) -> Container:
    box = Container(tmp_path, dataset)
    box.stock_weights(PRESET)
    return box


def _dit(box: Container) -> Path:
    [dit] = [p for p in box.weights.rglob("*.safetensors") if "diffusion_models" in str(p)]
    return dit


def test_a_run_records_the_check_and_stamps_every_lora(box):
    tiny_wan.write_dit(_dit(box), prefix="model.diffusion_model.")  # the 1.3B file's own keys
    result = box.run(box.env(PRESET, LORA_GYM_SET=QUICK))
    assert result.returncode == 0, result.stderr + result.stdout
    [run_dir] = box.runs()
    run = json.loads((run_dir / "run.json").read_text())
    record = run["lora_check"]["train"]
    assert record["status"] == "passed" and record["dit"] == str(_dit(box)) and record["dit_checked"]
    assert [(f["path"], f["modules"], f["problems"]) for f in record["files"]] == [
        (f"{PRESET}-000002.safetensors", 20, []), (f"{PRESET}.safetensors", 20, [])]
    assert record["want"]["network_dim"] == 16 and record["want"]["metadata"]["lora_gym.preset"] == PRESET
    assert "[lora-gym] train: LoRA check passed: 2 file(s), 20 modules each" in result.stdout
    with safe_open(run_dir / f"{PRESET}.safetensors", "numpy") as handle:
        meta = handle.metadata()
    assert meta["lora_gym.base_model"].startswith("Comfy-Org/Wan_2.1_ComfyUI_repackaged:") and "expert" not in meta
    assert meta["ss_sd_model_name"] == _dit(box).name  # all musubi says of its base


def test_a_lora_that_would_load_partially_fails_the_run_and_a_restart(box):
    tiny_wan.write_dit(_dit(box), prefix="model.diffusion_model.")
    env = box.env(PRESET, LORA_GYM_SET=QUICK, LORA_GYM_RUN_ID="partial", FAKE_MUSUBI_UNSTRIPPED="1")
    result = box.run(env)
    assert result.returncode == lora_verify.EXIT_CODE, result.stderr + result.stdout
    run = json.loads((box.output / "partial" / "run.json").read_text())
    reason = run["failure"]["hint"]
    assert run["status"] == "failed" and run["failure"]["kind"] == "lora_check" and "\n" not in reason
    assert reason.startswith(f"LoRA check failed: {PRESET}-000002.safetensors: 20 of 20 "
                             "module(s) name no weight of the DiT (e.g. lora_unet_model_diffusion_model_blocks_0_")
    assert reason.endswith("(2 of 2 LoRA files fail)")
    assert [(s["name"], s["status"], s["exit_code"]) for s in run["steps"]][-1] == ("train", "failed", 0)
    assert result.stdout.strip().splitlines()[-1].endswith(reason)  # the line a platform's status page shows
    assert html.escape(reason) in (box.output / "partial" / "report.html").read_text()
    leftover = box.output / "partial" / f".{PRESET}.safetensors{lora_verify.STAMP}"
    leftover.write_bytes(b"a stamp cut short by a kill")
    again = box.run(env)  # the restart skips the finished training, and checks it again
    assert not leftover.exists()
    assert again.returncode == lora_verify.EXIT_CODE and "train: skipped, it finished before the restart" in \
        again.stdout and again.stdout.strip().splitlines()[-1].endswith(reason)


def report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli.main", "report", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def test_launcher_report_checks_again_where_the_dit_is(box, tmp_path):
    assert box.run(box.env(PRESET, LORA_GYM_SET=QUICK)).returncode == 0
    [run_dir] = box.runs()
    done = report(run_dir)
    assert done.returncode == 0, done.stderr
    assert f"LoRA check train: passed (2 file(s); DiT {_dit(box)})" in done.stdout
    moved = tmp_path / "elsewhere" / _dit(box).name
    moved.parent.mkdir()
    _dit(box).rename(moved)
    blind = report(run_dir)
    assert blind.returncode == 0 and "passed (2 file(s); no DiT here: names and shapes not re-checked)" in blind.stdout
    assert "DiT not here" in (run_dir / "report.html").read_text()
    wrong = run_dir / f"{PRESET}.safetensors"
    with safe_open(wrong, "numpy") as handle:
        meta = handle.metadata()
    write_lora(wrong, dim=16, alpha=16.0, shapes={"blocks.0.self_attn.q": (tiny_wan.DIM, 20)}, metadata=meta)
    found = report(run_dir, "--dit", moved)
    assert found.returncode == 1 and f"DiT {moved}" in found.stdout
    assert found.stderr.splitlines() == [f"error: LoRA check train failed: {PRESET}.safetensors: "
                                         "1 module(s) do not fit their DiT weight (e.g. lora_unet_blocks_0_self_attn_q "
                                         "has lora_down [16, 20] and lora_up [16, 16] for blocks.0.self_attn.q.weight "
                                         "[16, 16]) (1 of 2 LoRA files fail)"]
    page = (run_dir / "report.html").read_text()
    assert "lora_unet_blocks_0_self_attn_q has lora_down [16, 20]" in page
