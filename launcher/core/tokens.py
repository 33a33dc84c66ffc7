"""Frame and token arithmetic of musubi's Wan datasets, shared by the plan's memory fit and the media checks."""

from __future__ import annotations

STEP = 16  # musubi's RESOLUTION_STEPS_WAN: bucket sides are multiples of 16 pixels
# musubi's default for a video entry's max_frames (config_utils.VideoDatasetParams).
DEFAULT_MAX_FRAMES = 129


def latent_tokens(width: int, height: int, frames: int = 1) -> int:
    """DiT tokens of one item: the VAE packs 4 frames (plus the first) and 8x8 pixels, the DiT patches 2x2."""
    return ((frames - 1) // 4 + 1) * (width // STEP) * (height // STEP)
