"""Test double: a tiny Wan DiT with the real file's key names and layout (dim 16, 2 blocks, fp16), and a
lightx2v-style LoRA for it.

Keys as Wan-AI's Wan 2.1/2.2 DiT files name them (musubi-tuner's wan/modules/model.py builds the same modules):
patch/text/time embeddings, per block `modulation`, `self_attn` and `cross_attn` q/k/v/o with their RMS norms,
`norm3`, `ffn.0`/`ffn.2`, the head; Wan 2.1 I2V adds `cross_attn.k_img`/`v_img` and `img_emb`. The 1.3B file
carries every key under `model.diffusion_model.` (`prefix`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save

DIM, FFN, BLOCKS, TEXT, FREQ, OUT = 16, 32, 2, 24, 8, 4


def dit_shapes(i2v: bool = False, blocks: int = BLOCKS) -> dict[str, list[int]]:
    shapes = {"patch_embedding.weight": [DIM, OUT, 1, 2, 2], "patch_embedding.bias": [DIM],
              "text_embedding.0.weight": [DIM, TEXT], "text_embedding.2.weight": [DIM, DIM],
              "time_embedding.0.weight": [DIM, FREQ], "time_embedding.2.weight": [DIM, DIM],
              "time_projection.1.weight": [DIM * 6, DIM], "head.modulation": [1, 2, DIM],
              "head.head.weight": [OUT * 4, DIM]}
    for b in range(blocks):
        block = f"blocks.{b}"
        shapes[f"{block}.modulation"] = [1, 6, DIM]
        shapes[f"{block}.norm3.weight"] = [DIM]
        for attn in ("self_attn", "cross_attn"):
            for layer in ("q", "k", "v", "o"):
                shapes[f"{block}.{attn}.{layer}.weight"], shapes[f"{block}.{attn}.{layer}.bias"] = [DIM, DIM], [DIM]
            shapes[f"{block}.{attn}.norm_q.weight"] = shapes[f"{block}.{attn}.norm_k.weight"] = [DIM]
        if i2v:
            shapes[f"{block}.cross_attn.k_img.weight"] = shapes[f"{block}.cross_attn.v_img.weight"] = [DIM, DIM]
            shapes[f"{block}.cross_attn.norm_k_img.weight"] = [DIM]
        shapes[f"{block}.ffn.0.weight"], shapes[f"{block}.ffn.2.weight"] = [FFN, DIM], [DIM, FFN]
    if i2v:
        shapes |= {"img_emb.proj.0.weight": [TEXT], "img_emb.proj.1.weight": [DIM, TEXT],
                   "img_emb.proj.3.weight": [DIM, DIM], "img_emb.proj.4.weight": [DIM]}
    return shapes


def dit_bytes(i2v: bool = False, prefix: str = "", seed: int = 0, blocks: int = BLOCKS) -> bytes:
    rng = np.random.default_rng(seed)
    return save({prefix + key: (rng.standard_normal(shape) * 0.05).astype(np.float16)
                 for key, shape in dit_shapes(i2v, blocks).items()}, metadata={"format": "pt"})


def write_dit(path: Path, i2v: bool = False, prefix: str = "") -> None:
    Path(path).write_bytes(dit_bytes(i2v, prefix))


def write_lightning_lora(path: Path, rank: int = 2) -> None:
    """A lightx2v-style LoRA (`diffusion_model.<key>.lora_down/up.weight`) on each block's self_attn.q."""
    rng = np.random.default_rng(1)
    tensors = {}
    for block in range(BLOCKS):
        name = f"diffusion_model.blocks.{block}.self_attn.q"
        tensors[f"{name}.lora_down.weight"] = (rng.standard_normal((rank, DIM)) * 0.1).astype(np.float16)
        tensors[f"{name}.lora_up.weight"] = (rng.standard_normal((DIM, rank)) * 0.1).astype(np.float16)
    Path(path).write_bytes(save(tensors))
