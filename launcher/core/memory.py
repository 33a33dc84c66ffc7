"""GPU and host memory of one musubi-tuner Wan LoRA training, estimated before launch (an ESTIMATE, +-35%).

Pure arithmetic, no torch: the plan calls it for every `--dry-run`. Sources, the derivation of every constant
and the error bars are in docs/gpu-memory.md; `benchmarks/gpu_memory.py` measures what this predicts.

  GPU = resident weights + (blocks - swapped) x block weights + LoRA with grads and AdamW8bit state
        + activations (tokens of the largest batch x bytes per token) + CUDA context, all x fragmentation
  host = base process + the DiT when block swap loads it on the CPU first + offloaded activations
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from launcher import contract
from launcher.core.tokens import STEP, latent_tokens

GB = 2 ** 30  # a "24 GB" RTX 4090 or an "80 GB" H100 has 24 or 80 GiB: GPU classes are named in binary units
# FFN width per model width, from musubi's wan/configs (wan_t2v_14B.py: dim 5120, ffn_dim 13824;
# wan_t2v_1_3B.py: dim 1536, ffn_dim 8960); the contract carries dim and num_layers.
FFN_DIM = {5120: 13824, 1536: 8960}
TEXT_DIM, FREQ_DIM, CLIP_DIM, OUT_PATCH = 4096, 256, 1280, 16 * 4  # umT5 width, time embedding, CLIP, 16ch x 2x2
# Per parameter of the LoRA: fp32 weight + fp32 grad (musubi keeps LoRA weights in fp32 under mixed precision)
# + AdamW8bit's two 1-byte states and their block-wise scales.
LORA_BYTES = 4 + 4 + 2 + 0.1
# Activations per DiT token, bytes, with gradient checkpointing (derivation in docs/gpu-memory.md):
CKPT_INPUT_BYTES = 2  # x dim: each block's input, bf16/fp16, kept by torch.utils.checkpoint for the recompute
WORK_DIM_BYTES = 56  # x dim: one block recomputed and back-propagated (norms in fp32, q/k/v, rope, SDPA, grads)
WORK_FFN_BYTES = 8  # x ffn_dim: the FFN's hidden state before and after GELU, and their grads
WAN22_TIME_BYTES = 24  # x dim, twice: Wan 2.2's time modulation is per token ([B, L, 6, C] in fp32)
NO_CKPT_FACTOR = 0.5  # without checkpointing every block keeps about half its working set until backward
OFFLOAD_KEEP_BLOCKS = 2  # with activation offload, inputs of the block in flight and the next stay on the GPU
CUDA_CONTEXT_GB = 0.8  # CUDA context, cuBLAS/cuDNN workspaces: outside torch's allocator, on the card
FRAGMENTATION = 1.10  # torch's caching allocator reserves more than it allocates
HOST_BASE_GB = 12.0  # Python, torch and CUDA runtime, accelerate, two data-loader workers with cached latents
MIN_TOKENS = 256  # a 256x256 image: below this no dataset shrink helps


@dataclass(frozen=True)
class Shape:
    """The DiT's sizes, from the contract (musubi's configs) and FFN_DIM."""

    layers: int
    dim: int
    ffn: int
    wan22: bool
    img_attn: bool  # Wan 2.1 I2V: extra k_img/v_img projections in every cross-attention, and the CLIP MLP
    max_swap: int  # musubi's WanModel.enable_block_swap asserts blocks_to_swap <= num_blocks - 1

    @classmethod
    def of(cls, task: str) -> Shape:
        info = contract.task_info(task)
        return cls(info["num_layers"], info["dim"], FFN_DIM[info["dim"]], info["wan_version"] == "2.2",
                   info["needs_clip_features"], info["max_blocks_to_swap"])

    def block_linear_params(self) -> int:
        """Weights of one block's Linear layers: the part fp8 quantizes and LoRA adapts."""
        projections = 8 + 2 * self.img_attn  # self-attn q,k,v,o + cross-attn q,k,v,o (+ k_img, v_img)
        return projections * self.dim ** 2 + 2 * self.dim * self.ffn

    def block_other_params(self) -> int:
        """Biases, norms and the modulation table of one block: stay in 16 bits."""
        return (8 + 2 * self.img_attn) * self.dim + self.ffn + self.dim + 8 * self.dim + 6 * self.dim

    def resident_params(self) -> int:
        """Everything outside the blocks (embeddings, time projection, head): never swapped, never fp8."""
        d = self.dim
        params = 4 * 16 * d + TEXT_DIM * d + d * d + FREQ_DIM * d + d * d + 6 * d * d + OUT_PATCH * d
        return params + (CLIP_DIM ** 2 + CLIP_DIM * d if self.img_attn else 0)

    def lora_params(self, rank: int) -> int:
        """networks.lora_wan adapts every Linear in the blocks: rank x (in + out) each."""
        projections = 8 + 2 * self.img_attn
        return self.layers * rank * (projections * 2 * self.dim + 2 * (self.dim + self.ffn))

    def bytes_per_token(self, checkpointing: bool, offload: bool) -> tuple[float, float]:
        """(on the GPU, on the host) activation bytes per DiT token."""
        work = WORK_DIM_BYTES * self.dim + WORK_FFN_BYTES * self.ffn + WAN22_TIME_BYTES * self.dim * self.wan22
        shared = WAN22_TIME_BYTES * self.dim * self.wan22  # the time modulation, one tensor for all blocks
        if not checkpointing:
            return self.layers * work * NO_CKPT_FACTOR + work + shared, 0.0
        inputs = CKPT_INPUT_BYTES * self.dim
        if offload:
            return OFFLOAD_KEEP_BLOCKS * inputs + work + shared, self.layers * inputs
        return self.layers * inputs + work + shared, 0.0


@dataclass(frozen=True)
class Settings:
    fp8: bool
    blocks_to_swap: int = 0
    offload: bool = False  # --gradient_checkpointing_cpu_offload


@dataclass(frozen=True)
class Estimate:
    gpu_gb: float
    host_gb: float
    fixed_gpu_gb: float  # everything but the activations
    gpu_gb_per_token: float  # activations, the part a smaller dataset entry shrinks


def dit_gb(shape: Shape, fp8: bool, blocks_to_swap: int = 0) -> float:
    """A loaded DiT's weights on the GPU, in GiB (all of it with blocks_to_swap=0: what the host holds)."""
    block = shape.block_linear_params() * (1 if fp8 else 2) + shape.block_other_params() * 2
    return (shape.resident_params() * 2 + (shape.layers - blocks_to_swap) * block) / GB


def estimate(shape: Shape, settings: Settings, rank: int, tokens: int, checkpointing: bool = True) -> Estimate:
    """Peak memory of one training step on `tokens` DiT tokens (the largest batch), in GiB."""
    weights = dit_gb(shape, settings.fp8, settings.blocks_to_swap) * GB
    fixed = (weights + shape.lora_params(rank) * LORA_BYTES) * FRAGMENTATION / GB + CUDA_CONTEXT_GB
    on_gpu, on_host = shape.bytes_per_token(checkpointing, settings.offload)
    per_token = on_gpu * FRAGMENTATION / GB
    # Block swap makes musubi load the whole DiT onto the CPU before moving the kept blocks to the GPU.
    loaded = dit_gb(shape, settings.fp8) * GB if settings.blocks_to_swap else 0
    host = HOST_BASE_GB + (loaded + on_host * tokens) / GB
    return Estimate(round(fixed + per_token * tokens, 1), round(host, 1), fixed, per_token)


def host_request_gb(host_gb: float) -> int:
    """What to ask a platform for: the estimate rounded up to 8 GB, as machines come in such sizes."""
    return int(math.ceil(host_gb / 8) * 8)


# --- dataset entries -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    """The largest item one dataset entry feeds the DiT: `key` is its dotted preset path."""

    key: str
    width: int
    height: int
    frames: int
    batch_size: int = 1
    frames_key: str = "target_frames"  # "max_frames" for frame_extraction "full"

    @property
    def tokens(self) -> int:
        return latent_tokens(self.width, self.height, self.frames) * self.batch_size

    def label(self) -> str:
        return f"{self.key} ({self.width}x{self.height}" + (f"x{self.frames} frames)" if self.frames > 1 else ")")

    def shrunk(self, tokens: int) -> str:
        """The `--set` that cuts this entry to at most `tokens`: fewer frames at this size, or a smaller size."""
        per_frame = latent_tokens(self.width, self.height) * self.batch_size
        options = []
        latent_frames = tokens // per_frame if per_frame else 0
        if self.frames > 1 and latent_frames >= 1:
            options.append(f"--set {self.key}.{self.frames_key}={(latent_frames - 1) * 4 + 1}")
        scale = math.sqrt(tokens / self.tokens)
        w, h = (max(STEP, int(side * scale) // STEP * STEP) for side in (self.width, self.height))
        if latent_tokens(w, h, self.frames) * self.batch_size <= tokens:
            options.append(f"--set {self.key}.resolution={w}x{h}")
        return " or ".join(options) or "a smaller entry"
