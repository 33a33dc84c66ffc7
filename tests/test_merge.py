"""Lightning merge: merged values, key layouts, loud failures, atomic output, and the CLI."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")

from lora_gym_entrypoint.merge import MergeError, merge_lora  # noqa: E402

DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.int32: "I32"}
RANK = 2


def save(path, tensors, metadata=None):
    """Test-side safetensors writer, independent of the module under test (and of numpy,
    which safetensors' own save_file needs but this venv does not have)."""
    header, blobs, offset = ({"__metadata__": metadata} if metadata else {}), [], 0
    for name, tensor in tensors.items():
        raw = bytes(tensor.contiguous().reshape(-1).view(torch.uint8).tolist())
        header[name] = {"dtype": DTYPES[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"".join(blobs))
    return path


def rand(*shape, dtype=torch.float32, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.1).to(dtype)


def dit_tensors(dtype=torch.float16, prefix=""):
    tensors = {}
    for block in range(2):
        for proj in ("q", "k"):
            name = f"{prefix}blocks.{block}.self_attn.{proj}"
            tensors[f"{name}.weight"] = rand(8, 8, dtype=dtype, seed=block * 10 + len(tensors))
            tensors[f"{name}.bias"] = rand(8, dtype=dtype, seed=block * 10 + len(tensors))
        tensors[f"{prefix}blocks.{block}.norm3.weight"] = rand(8, dtype=dtype, seed=block * 10 + 3)
    tensors[f"{prefix}patch_embedding.weight"] = rand(8, 4, 1, 2, 2, dtype=dtype, seed=99)
    return tensors


def lora_pair(module, prefix="diffusion_model.", alpha=None, peft=False, seed=0, shape=(8, 8)):
    down, up = ("lora_A", "lora_B") if peft else ("lora_down", "lora_up")
    tensors = {f"{prefix}{module}.{down}.weight": rand(RANK, shape[1], seed=seed + 100),
               f"{prefix}{module}.{up}.weight": rand(shape[0], RANK, seed=seed + 200)}
    if alpha is not None:
        tensors[f"{prefix}{module}.alpha"] = torch.tensor(float(alpha))
    return tensors


def expected(weight, down, up, factor):
    """The reference merge: float32 math, cast back to the DiT's dtype."""
    return (weight.float() + factor * (up.float() @ down.float())).to(weight.dtype)


@pytest.fixture
def files(tmp_path):
    def make(dit, lora, metadata=None):
        return save(tmp_path / "dit.safetensors", dit, metadata), save(tmp_path / "lora.safetensors", lora)
    return make


def leftovers(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if "merged" in p.name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_merge_matches_reference(tmp_path, files, dtype):
    dit = dit_tensors(dtype)
    lora = {**lora_pair("blocks.0.self_attn.q", alpha=RANK), **lora_pair("blocks.1.self_attn.k", seed=1)}
    dit_path, lora_path = files(dit, lora, metadata={"format": "pt", "origin": "wan"})
    out = tmp_path / "merged.safetensors"

    report = merge_lora(dit_path, lora_path, 1.0, out)

    merged = st_torch.load_file(out)
    assert report.merged_modules == 2 and report.tensors_written == len(dit) and report.output == out
    assert list(merged) == list(dit) and all(merged[k].dtype == dtype for k in merged)
    for key, module in (("blocks.0.self_attn.q.weight", "blocks.0.self_attn.q"),
                        ("blocks.1.self_attn.k.weight", "blocks.1.self_attn.k")):
        down = lora[f"diffusion_model.{module}.lora_down.weight"]
        up = lora[f"diffusion_model.{module}.lora_up.weight"]
        assert torch.equal(merged[key], expected(dit[key], down, up, 1.0))
        assert not torch.equal(merged[key], dit[key])
    untouched = set(dit) - {"blocks.0.self_attn.q.weight", "blocks.1.self_attn.k.weight"}
    assert all(torch.equal(merged[k], dit[k]) for k in untouched)
    from safetensors import safe_open
    with safe_open(out, framework="pt") as fh:
        meta = fh.metadata()
    assert meta["origin"] == "wan" and meta["lora_gym.merged_lora"] == "lora.safetensors"
    assert meta["lora_gym.merged_strength"] == "1.0"
    assert not (tmp_path / "merged.safetensors.partial").exists()


@pytest.mark.parametrize(("alpha", "strength", "factor"), [(None, 1.0, 1.0), (1.0, 1.0, 0.5), (8.0, 1.0, 4.0),
                                                            (None, 0.5, 0.5), (1.0, 0.25, 0.125)])
def test_alpha_and_strength_scale_the_delta(tmp_path, files, alpha, strength, factor):
    dit = dit_tensors(torch.float32)
    lora = lora_pair("blocks.0.self_attn.q", alpha=alpha)
    out = tmp_path / "merged.safetensors"
    merge_lora(*files(dit, lora), strength, out)
    down, up = lora["diffusion_model.blocks.0.self_attn.q.lora_down.weight"], \
        lora["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
    got = st_torch.load_file(out)["blocks.0.self_attn.q.weight"]
    torch.testing.assert_close(got, expected(dit["blocks.0.self_attn.q.weight"], down, up, factor))


def test_diff_and_diff_b(tmp_path, files):
    dit = dit_tensors(torch.bfloat16)
    lora = {"diffusion_model.blocks.0.norm3.diff": rand(8, seed=5),
            "diffusion_model.blocks.1.self_attn.q.diff_b": rand(8, seed=6),
            "diffusion_model.blocks.1.self_attn.k.diff": rand(8, 8, seed=7)}
    out = tmp_path / "merged.safetensors"
    report = merge_lora(*files(dit, lora), 0.5, out)
    merged = st_torch.load_file(out)
    for target, key in (("blocks.0.norm3.weight", "blocks.0.norm3.diff"),
                        ("blocks.1.self_attn.q.bias", "blocks.1.self_attn.q.diff_b"),
                        ("blocks.1.self_attn.k.weight", "blocks.1.self_attn.k.diff")):
        want = (dit[target].float() + 0.5 * lora[f"diffusion_model.{key}"]).to(torch.bfloat16)
        assert torch.equal(merged[target], want)
    assert report.merged_modules == 3
    assert torch.equal(merged["blocks.1.self_attn.q.weight"], dit["blocks.1.self_attn.q.weight"])


@pytest.mark.parametrize("dit_prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("lora_prefix", ["", "diffusion_model.", "model.diffusion_model.", "transformer."])
def test_prefixes_and_peft_keys(tmp_path, files, dit_prefix, lora_prefix):
    dit = dit_tensors(torch.float16, prefix=dit_prefix)
    lora = lora_pair("blocks.1.self_attn.q", prefix=lora_prefix, peft=True, alpha=4)
    out = tmp_path / "merged.safetensors"
    merge_lora(*files(dit, lora), 1.0, out)
    key = f"{dit_prefix}blocks.1.self_attn.q.weight"
    down = lora[f"{lora_prefix}blocks.1.self_attn.q.lora_A.weight"]
    up = lora[f"{lora_prefix}blocks.1.self_attn.q.lora_B.weight"]
    merged = st_torch.load_file(out)
    assert list(merged) == list(dit)
    assert torch.equal(merged[key], expected(dit[key], down, up, 2.0))


def test_conv_lora(tmp_path, files):
    dit = dit_tensors(torch.float16)
    lora = {"diffusion_model.patch_embedding.lora_down.weight": rand(RANK, 4, 1, 2, 2, seed=1),
            "diffusion_model.patch_embedding.lora_up.weight": rand(8, RANK, 1, 1, 1, seed=2)}
    out = tmp_path / "merged.safetensors"
    merge_lora(*files(dit, lora), 1.0, out)
    weight = dit["patch_embedding.weight"]
    delta = (lora["diffusion_model.patch_embedding.lora_up.weight"].flatten(1)
             @ lora["diffusion_model.patch_embedding.lora_down.weight"].flatten(1)).reshape(weight.shape)
    merged = st_torch.load_file(out)["patch_embedding.weight"]
    assert torch.equal(merged, (weight.float() + delta).to(weight.dtype))


def assert_fails(tmp_path, dit_path, lora_path, *fragments, strength=1.0):
    with pytest.raises(MergeError) as info:
        merge_lora(dit_path, lora_path, strength, tmp_path / "merged.safetensors")
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    assert leftovers(tmp_path) == []  # neither the output nor its .partial
    return message


def test_unmatched_key_fails_and_writes_nothing(tmp_path, files):
    lora = {**lora_pair("blocks.0.self_attn.q"), "diffusion_model.blocks.7.ffn.0.diff_b": rand(8)}
    message = assert_fails(tmp_path, *files(dit_tensors(), lora), "1 LoRA key(s)",
                           "diffusion_model.blocks.7.ffn.0.diff_b", "lightning.lora")
    assert "does not fit this DiT" in message


def test_unmatched_message_shows_at_most_three_examples(tmp_path, files):
    lora = {}
    for block in range(5, 10):
        lora.update(lora_pair(f"blocks.{block}.self_attn.q"))
    message = assert_fails(tmp_path, *files(dit_tensors(), lora), "10 LoRA key(s)", ", ...")
    assert message.count("blocks.") == 3


def test_shape_mismatch(tmp_path, files):
    lora = lora_pair("blocks.0.self_attn.q", shape=(8, 4))
    assert_fails(tmp_path, *files(dit_tensors(), lora), "shape", "[8, 4]", "blocks.0.self_attn.q.weight")


def test_down_without_up(tmp_path, files):
    lora = lora_pair("blocks.0.self_attn.q")
    del lora["diffusion_model.blocks.0.self_attn.q.lora_up.weight"]
    assert_fails(tmp_path, *files(dit_tensors(), lora), "blocks.0.self_attn.q.lora_down.weight", "lora_up")


def test_unknown_suffix(tmp_path, files):
    lora = {**lora_pair("blocks.0.self_attn.q"),
            "diffusion_model.blocks.0.self_attn.q.lora_mid.weight": rand(2, 2)}
    assert_fails(tmp_path, *files(dit_tensors(), lora), "unknown suffix", "lora_mid")


def test_non_float_target_dtype(tmp_path, files):
    dit = {**dit_tensors(), "blocks.0.self_attn.q.weight": torch.zeros(8, 8, dtype=torch.int32)}
    assert_fails(tmp_path, *files(dit, lora_pair("blocks.0.self_attn.q")), "I32")


def test_fp16_overflow_fails_mid_write_and_removes_partial(tmp_path, files):
    assert_fails(tmp_path, *files(dit_tensors(), lora_pair("blocks.1.self_attn.k")), "inf/NaN", strength=1e9)


def test_missing_and_truncated_inputs(tmp_path, files):
    dit_path, lora_path = files(dit_tensors(), lora_pair("blocks.0.self_attn.q"))
    assert_fails(tmp_path, tmp_path / "nope.safetensors", lora_path, "DiT file not found")
    lora_path.write_bytes(b"<html>rate limited</html>")
    assert_fails(tmp_path, dit_path, lora_path, "LoRA", "not a safetensors file")
    dit_path.write_bytes(dit_path.read_bytes()[:-10])
    assert_fails(tmp_path, dit_path, lora_path, "DiT", "truncated")


def test_refuses_to_overwrite_unless_asked(tmp_path, files):
    dit_path, lora_path = files(dit_tensors(), lora_pair("blocks.0.self_attn.q"))
    out = tmp_path / "merged.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(MergeError, match="already exists"):
        merge_lora(dit_path, lora_path, 1.0, out)
    assert out.read_bytes() == b"precious"
    merge_lora(dit_path, lora_path, 1.0, out, overwrite=True)
    assert "blocks.0.self_attn.q.weight" in st_torch.load_file(out)


def test_progress_counts_bytes_up_to_total(tmp_path, files):
    calls = []
    dit = dit_tensors()
    merge_lora(*files(dit, lora_pair("blocks.0.self_attn.q")), 1.0, tmp_path / "merged.safetensors",
               progress=lambda done, total: calls.append((done, total)))
    total = sum(t.numel() * t.element_size() for t in dit.values())
    assert len(calls) == len(dit) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "lora_gym_entrypoint.merge", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_cli_success_prints_progress_and_summary(tmp_path, files):
    dit_path, lora_path = files(dit_tensors(), lora_pair("blocks.0.self_attn.q"))
    out = tmp_path / "merged.safetensors"
    result = run_cli("--dit", dit_path, "--lora", lora_path, "--strength", "0.8", "--output", out)
    assert result.returncode == 0, result.stderr
    assert "merge: 100%" in result.stdout and "merged 1 LoRA modules" in result.stdout
    assert out.is_file()


@pytest.mark.parametrize("broken", ["unmatched", "missing"])
def test_cli_error_exits_2_with_one_line(tmp_path, files, broken):
    dit_path, lora_path = files(dit_tensors(), lora_pair("blocks.9.self_attn.q"))
    if broken == "missing":
        lora_path = tmp_path / "absent.safetensors"
    out = tmp_path / "merged.safetensors"
    result = run_cli("--dit", dit_path, "--lora", lora_path, "--strength", "1", "--output", out)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert leftovers(tmp_path) == []


def test_module_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['safetensors'] = None; "
            "import lora_gym_entrypoint.merge as m; print(m.MergeError.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "MergeError"
