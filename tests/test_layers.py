"""Layers under a cap: big DiTs as safetensors shards, other big files as byte parts, everything verified.

Scaled down: a cap of 2 MB and files of a few MB on the loopback fake Hub, through the same code the
Dockerfile's `layers.py slot` and `layers.py verify` steps run.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
import torch
from conftest import EXAMPLE_DATASET
from fakes.fake_hub import FakeHub
from safetensors.torch import load_file, save_file

from launcher.core.job import prepare
from launcher.core.plan import ContainerPaths
from launcher.core.presets import load_preset
from launcher.weights import fetch, layers, lockfile
from lora_gym_entrypoint import weights as entry_weights
from lora_gym_entrypoint.merge import merge_lora, shards_of

CAP = 2_000_000
DIT = load_preset("wan21-t2v-1.3b").preset.model.dit  # the DiT this test makes big enough to shard
# musubi-tuner's own test for a split file name (utils/safetensors_utils.get_split_weight_filenames)
MUSUBI_SPLIT = re.compile(r"^(.*?)(\d+)-of-(\d+)\.safetensors$")


def dit_tensors(blocks: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """A Wan-shaped DiT of about 5 MB: blocks of fp16 tensors plus a head."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {"head.head.weight": torch.randn(64, 256, generator=gen).half()}
    for b in range(blocks):
        for name in ("cross_attn.k", "cross_attn.q", "self_attn.q", "ffn.0"):
            tensors[f"blocks.{b}.{name}.weight"] = torch.randn(256, 400, generator=gen).half()
    return tensors


def repos(tmp_path: Path) -> dict[str, dict[str, bytes]]:
    """The wan21 t2v files: the 1.3B DiT a real safetensors file, the T5 4.5 MB of bytes, the rest small."""
    save_file(dit_tensors(), tmp_path / "dit.safetensors", metadata={"format": "pt"})
    result: dict[str, dict[str, bytes]] = {}
    for entry in lockfile.skeleton("wan21"):
        files = result.setdefault(entry["repo"], {})
        if entry["kind"] == "tokenizer":
            files[f"{entry['subfolder']}/tokenizer.json"] = b"{}"
        elif f"{entry['repo']}:{entry['path']}" == DIT:
            files[entry["path"]] = (tmp_path / "dit.safetensors").read_bytes()
        elif entry["path"].endswith(".pth") and "t5" in entry["path"]:
            files[entry["path"]] = hashlib.sha256(b"t5").digest() * 140_000  # 4.48 MB
        else:
            files[entry["path"]] = b"small file " + entry["path"].encode()
    return result


@pytest.fixture
def hub(tmp_path):
    with FakeHub(repos(tmp_path)) as fake:
        yield fake


@pytest.fixture
def entries(hub) -> list[dict]:
    doc = lockfile.resolve("wan21", endpoint=hub.url)
    return layers.baked(doc["files"], "full", {"t2v"})


def build_all(entries, hub, dest: Path) -> list[int]:
    """Run every slot as the Dockerfile does; the bytes each slot added (what its layer holds)."""
    sizes, before = [], 0
    for index in range(layers.MAX_SLOTS):
        layers.build_slot(entries, index, CAP, dest, hub.url, None, log=lambda _line: None)
        now = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        sizes.append(now - before)
        before = now
    return sizes


def test_the_lock_marks_only_dits_shardable():
    for family in lockfile.FAMILIES:
        for entry in lockfile.skeleton(family):
            assert entry.get("shardable", False) == ("diffusion_models/" in entry.get("path", "")), entry


def test_big_files_become_pieces_under_the_cap_and_verify(entries, hub, tmp_path):
    dest = tmp_path / "weights"
    sizes = build_all(entries, hub, dest)
    assert max(sizes) <= CAP and sum(1 for s in sizes if s) >= 5  # several layers, none over the cap
    doc = layers.verify(entries, CAP, dest)
    stored = doc["files"]
    dit, t5 = stored[DIT], next(v for k, v in stored.items() if "t5" in k)
    assert dit["storage"] == "shards" and len(dit["pieces"]) >= 3 and t5["storage"] == "parts"
    assert all(v["storage"] == "whole" for k, v in stored.items() if v is not dit and v is not t5)
    # musubi's naming: it finds every shard from the first, whose block 0 gives the dtype.
    first = dest / dit["pieces"][0]
    assert MUSUBI_SPLIT.match(first.name) and [p.name for p in shards_of(first)] == \
           [Path(p).name for p in dit["pieces"]]
    assert "blocks.0.cross_attn.k.weight" in load_file(first)
    merged = {k: v for p in dit["pieces"] for k, v in load_file(dest / p).items()}
    original = dit_tensors()
    assert merged.keys() == original.keys() and all(torch.equal(merged[k], original[k]) for k in original)
    joined = b"".join((dest / p).read_bytes() for p in t5["pieces"])
    assert hashlib.sha256(joined).hexdigest() == t5["sha256"]


def test_a_corrupt_piece_fails_verification(entries, hub, tmp_path):
    dest = tmp_path / "weights"
    build_all(entries, hub, dest)
    doc = layers.verify(entries, CAP, dest)
    shard = dest / doc["files"][DIT]["pieces"][1]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(layers.LayerError, match="shards do not add up to the locked sha256"):
        layers.verify(entries, CAP, dest)


def test_caps_that_cannot_work_are_one_line(entries, hub):
    headers = layers.headers_from_hub(entries, CAP, hub.url, None)
    with pytest.raises(layers.LayerError, match="too small: use at least 2 MB"):
        layers.layout(entries, 100_000, headers)
    big = dict(next(e for e in entries if not e.get("shardable")), size=layers.MAX_SLOTS * CAP * 2)
    with pytest.raises(layers.LayerError, match="need .* layers .* raise MAX_LAYER_GB"):
        layers.slots(layers.layout([big], CAP, {}), CAP)


def test_the_container_joins_parts_once_and_plans_with_the_first_shard(entries, hub, tmp_path):
    dest, cache = tmp_path / "weights", tmp_path / "cache"
    build_all(entries, hub, dest)
    layout = layers.verify(entries, CAP, dest)["files"]
    where = entry_weights.locations(layout, str(dest), str(cache))
    paths = ContainerPaths(weights=str(dest), cache=str(cache))
    job = prepare("wan21-t2v-1.3b", None, [], EXAMPLE_DATASET, run_id="r", paths=paths, locations=where)
    by_role = {w.role: w.container_path for w in job.plan.weights}
    assert by_role["dit"] == str(dest / layout[DIT]["pieces"][0])
    assert by_role["t5"].startswith(f"{cache}/weights/")
    train = next(s for s in job.plan.steps if s.name == "train")
    assert train.argv[train.argv.index("--dit") + 1] == by_role["dit"]
    lines: list[str] = []
    assert entry_weights.join_parts(job.plan.weights, layout, str(dest), str(cache), lines.append) == 1
    t5 = Path(by_role["t5"])
    assert hashlib.sha256(t5.read_bytes()).hexdigest() == layout[next(k for k in layout if "t5" in k)]["sha256"]
    assert entry_weights.join_parts(job.plan.weights, layout, str(dest), str(cache), lines.append) == 0
    assert any("into the cache volume, once" in line for line in lines)


def test_merge_reads_and_writes_shards_like_the_whole_file(tmp_path):
    tensors = dit_tensors(blocks=2)
    save_file(tensors, tmp_path / "whole.safetensors")
    names = list(tensors)
    for i, chunk in enumerate((names[:4], names[4:]), 1):
        save_file({k: tensors[k] for k in chunk}, tmp_path / f"dit-{i:05d}-of-00002.safetensors")
    gen = torch.Generator().manual_seed(1)
    lora = {"diffusion_model.blocks.1.ffn.0.lora_down.weight": torch.randn(4, 400, generator=gen),
            "diffusion_model.blocks.1.ffn.0.lora_up.weight": torch.randn(256, 4, generator=gen)}
    save_file(lora, tmp_path / "lora.safetensors")
    merge_lora(tmp_path / "whole.safetensors", tmp_path / "lora.safetensors", 0.5, tmp_path / "out" / "w.safetensors")
    report = merge_lora(tmp_path / "dit-00001-of-00002.safetensors", tmp_path / "lora.safetensors", 0.5,
                        tmp_path / "out" / "dit-00001-of-00002.safetensors")
    assert report.tensors_written == len(tensors)
    expected = load_file(tmp_path / "out" / "w.safetensors")
    got = {k: v for p in sorted((tmp_path / "out").glob("dit-*")) for k, v in load_file(p).items()}
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert not torch.equal(got["blocks.1.ffn.0.weight"], tensors["blocks.1.ffn.0.weight"])  # merged for real
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == \
           ["dit-00001-of-00002.safetensors", "dit-00002-of-00002.safetensors", "w.safetensors"]


def test_a_sharded_lightning_dit_merges_into_its_own_cache_folder():
    from launcher.core.job import prepare as plan_job

    ref = "Comfy-Org/Wan_2.2_ComfyUI_Repackaged:split_files/diffusion_models/wan2.2_t2v_high_noise_14B_fp16.safetensors"
    first = "/weights/Comfy-Org/Wan_2.2_ComfyUI_Repackaged/split_files/diffusion_models/" \
            "wan2.2_t2v_high_noise_14B_fp16-00001-of-00004.safetensors"
    whole = plan_job("wan22-t2v-lightning", "high", [], EXAMPLE_DATASET, run_id="r").plan
    sharded = plan_job("wan22-t2v-lightning", "high", [], EXAMPLE_DATASET, run_id="r", locations={ref: first}).plan
    merge = next(s for s in sharded.steps if s.name == "merge-lightning-high")
    output = merge.argv[merge.argv.index("--output") + 1]
    assert merge.argv[merge.argv.index("--dit") + 1] == first and output.endswith("-00001-of-00004.safetensors")
    train = next(s for s in sharded.steps if s.name == "train-high")
    assert train.argv[train.argv.index("--dit") + 1] == output
    whole_merge = next(s for s in whole.steps if s.name == "merge-lightning-high")
    assert whole_merge.markers != merge.markers  # never mistakes a whole merged file for shards


def test_fetch_module_stays_importable_beside_layers_without_the_package():
    # The Dockerfile runs layers.py as a script next to fetch.py, before the launcher package is installed.
    source = (Path(layers.__file__)).read_text()
    assert "import fetch" in source and fetch.__name__.endswith("fetch")
