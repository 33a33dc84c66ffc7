"""The LoRA a publish uploads is musubi-tuner's file, unconverted; this keeps "every key loads in ComfyUI 0.3.64 and
diffusers 0.42.1" true. A LoRA in the format musubi 30c658c4 writes (its naming rules in
launcher/publish/lora_format.json) for a small Wan DiT with ComfyUI's own Wan layer names and shapes:
- maps key for key onto ComfyUI's key map, read by ComfyUI's LoRA loader rules, with shapes that make each weight;
- goes through diffusers' own Wan LoRA reader (the real _convert_musubi_wan_lora_to_diffusers) onto the Linear
  layers of a real, tiny diffusers WanTransformer3DModel, shapes included;
- and the pipeline still trains that format: every shipped preset plans musubi's networks.lora_wan, no
  --network_args. If any of that changes, a publish would no longer be "no conversion needed"."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from launcher.core.job import prepare
from launcher.publish import loras

FACTS = loras.facts()
MUSUBI, COMFY = FACTS["musubi"], FACTS["comfyui"]
PRESETS = sorted(p.stem for p in (Path(__file__).parent.parent / "presets").glob("*.toml"))
DIM, FFN, BLOCKS, RANK = 16, 24, 3, 4


def comfy_dit(i2v: bool) -> dict[str, tuple[int, ...]]:
    """The Wan DiT's block weights as ComfyUI names them (comfy/ldm/wan/model.py), with a few outside the blocks."""
    linears = COMFY["wan_block_linears"]["value"]
    shapes = {"ffn.0": (FFN, DIM), "ffn.2": (DIM, FFN)}
    names = [f"self_attn.{x}" for x in linears["self_attn"]] + [f"cross_attn.{x}" for x in linears["cross_attn"]]
    names += [f"cross_attn.{x}" for x in linears["cross_attn_i2v"]] if i2v else []
    weights = {}
    for block in range(BLOCKS):
        for name in names + [f"ffn.{x}" for x in linears["ffn"]]:
            weights[f"blocks.{block}.{name}.weight"] = shapes.get(name, (DIM, DIM))
        weights[f"blocks.{block}.self_attn.norm_q.weight"] = (DIM,)
        weights[f"blocks.{block}.modulation"] = (1, 6, DIM)
    weights |= {"text_embedding.0.weight": (DIM, 32), "time_projection.1.weight": (6 * DIM, DIM),
                "head.head.weight": (64, DIM), "patch_embedding.weight": (DIM, 16, 1, 2, 2)}
    return weights


def musubi_lora(dit: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """What musubi's LoRANetwork saves for this DiT: a module per Linear inside a WanAttentionBlock (blocks.<i>.),
    not excluded, named prefix + path with '.' as '_'; lora_down [rank, in], lora_up [out, rank], alpha []."""
    exclude, prefix = re.compile(MUSUBI["exclude"]["value"]), MUSUBI["prefix"]["value"]
    rng, state = np.random.default_rng(0), {}
    for key, shape in dit.items():
        path = key.removesuffix(".weight")
        if not (key.endswith(".weight") and len(shape) == 2 and re.fullmatch(r"blocks\.\d+\..+", path)):
            continue  # Linear layers of the blocks only (norm weights are 1-D, modulation is a bare parameter)
        if exclude.fullmatch(path):
            continue
        name = f"{prefix}.{path}".replace(".", "_")
        state[f"{name}.lora_down.weight"] = rng.standard_normal((RANK, shape[1])).astype(np.float32)
        state[f"{name}.lora_up.weight"] = rng.standard_normal((shape[0], RANK)).astype(np.float32)
        state[f"{name}.alpha"] = np.array(RANK / 2, dtype=np.float32)
    return state


def comfy_loads(lora: dict[str, np.ndarray], dit: dict[str, tuple[int, ...]]) -> tuple[set[str], list[str]]:
    """ComfyUI's reading, from its rules as data: the key map of model_lora_keys_unet (lora_unet_<path with _> ->
    diffusion_model.<path>.weight), the LoRAAdapter tensor names, alpha. Returns (weights patched, problems)."""
    km, names = COMFY["key_map"], COMFY["tensor_names"]["value"]
    if COMFY["converted_first"]["wan_fun_marker"] in lora:
        return set(), ["ComfyUI would rewrite this LoRA as a Wan Fun LoRA first"]
    key_map = {km["lora_prefix"] + k.removesuffix(km["weight_suffix"]).replace(".", "_"): k
               for k in dit if k.endswith(km["weight_suffix"])}
    loaded, patched, problems = set(), set(), []
    for x, weight in key_map.items():
        up, down, alpha = (names[r].format(x=x) for r in ("up", "down", "alpha"))
        if up not in lora:
            continue
        loaded |= {up, down} | ({alpha} if alpha in lora else set())
        if (lora[up].shape[0], lora[down].shape[1]) != dit[weight] or lora[up].shape[1] != lora[down].shape[0]:
            problems.append(f"{x}: up {lora[up].shape} x down {lora[down].shape} is not {dit[weight]}")
        patched.add(weight)
    problems += [f"lora key not loaded: {k}" for k in sorted(set(lora) - loaded)]  # comfy/lora.py load_lora
    return patched, problems


@pytest.mark.parametrize("i2v", [False, True])
def test_every_key_of_musubis_format_lands_in_comfyui(i2v):
    dit = comfy_dit(i2v)
    lora = musubi_lora(dit)
    patched, problems = comfy_loads(lora, dit)
    assert problems == []
    block_linears = {k for k, s in dit.items() if k.startswith("blocks.") and len(s) == 2 and k.endswith(".weight")}
    assert patched == block_linears  # every Linear of every block, nothing else
    assert loras.format_problem(list(lora), MUSUBI["network_module"]) is None


def test_comfyui_rules_catch_a_lora_that_would_not_load():
    dit = comfy_dit(False)
    lora = musubi_lora(dit)
    prefixed = {k.replace("lora_unet_", "lora_unet_model_diffusion_model_"): v for k, v in lora.items()}
    assert any("not loaded" in p for p in comfy_loads(prefixed, dit)[1])  # the 1.3B file's own key names
    wrong = dict(lora, **{"lora_unet_blocks_0_ffn_0.lora_up.weight": np.zeros((DIM, RANK), np.float32)})
    assert any("is not" in p for p in comfy_loads(wrong, dit)[1])
    assert comfy_loads({k.replace("lora_unet_", "lora_unet__"): v for k, v in lora.items()}, dit)[1]


def test_the_publish_check_refuses_what_would_load_partially():
    lora = list(musubi_lora(comfy_dit(False)))
    assert "do not start with lora_unet_" in loras.format_problem(
        [k.replace("lora_unet_", "diffusion_model.") for k in lora], "networks.lora_wan")
    assert "lack one of" in loras.format_problem([k for k in lora if not k.endswith("0_ffn_2.alpha")],
                                                 "networks.lora_wan")
    assert "is no LoRA tensor" in loras.format_problem([*lora, "lora_unet_blocks_0_ffn_0.dora_scale"],
                                                       "networks.lora_wan")
    assert loras.format_problem([], "networks.lora_wan") == "it holds no tensor"
    assert loras.format_problem(["lora_unet_blocks_0_ffn_0.hada_w1_a"], "networks.loha") is None


@pytest.mark.parametrize("i2v", [False, True])
def test_diffusers_reads_musubis_format_onto_its_wan_transformer(i2v):
    torch = pytest.importorskip("torch")
    conversion = pytest.importorskip("diffusers.loaders.lora_conversion_utils")
    from diffusers import WanTransformer3DModel

    lora = musubi_lora(comfy_dit(i2v))
    converted = conversion._convert_musubi_wan_lora_to_diffusers({k: torch.from_numpy(v) for k, v in lora.items()})
    # A tiny model of the same layout (diffusers' Wan transformer; I2V adds add_k/v_proj: added_kv_proj_dim, as the
    # Wan2.1-I2V-14B-*-Diffusers configs set it).
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=DIM // 2,
                                  in_channels=16, out_channels=16, text_dim=32, freq_dim=16, ffn_dim=FFN,
                                  num_layers=BLOCKS, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                  image_dim=DIM if i2v else None, added_kv_proj_dim=DIM if i2v else None)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    modules = {}
    for key, tensor in converted.items():
        name, role = re.fullmatch(r"transformer\.(.+)\.(lora_A|lora_B)\.weight", key).groups()
        modules.setdefault(name, {})[role] = tensor.shape
    assert len(modules) * 2 == len(converted) == len(lora) * 2 // 3  # every module, both matrices, alpha folded in
    for name, shapes in modules.items():
        layer = linears[name]  # KeyError: a LoRA module diffusers has no layer for
        assert shapes == {"lora_A": (RANK, layer.in_features), "lora_B": (layer.out_features, RANK)}
    in_blocks = {n for n in linears if n.startswith("blocks.") and ".norm" not in n and "image_embedder" not in n}
    assert set(modules) == in_blocks


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_trains_musubis_lora_format(preset, dataset):
    expert = "both" if preset.startswith("wan22") else None
    plan = prepare(preset, expert, (), dataset, run_id="x").plan
    trains = [s.argv for s in plan.steps if s.name.startswith("train")]
    assert trains
    for argv in trains:
        assert argv[argv.index("--network_module") + 1] == MUSUBI["network_module"]
        assert "--network_args" not in argv  # include/exclude patterns would change the key set
