"""LoRA Gym launcher: presets, plans and backends for musubi-tuner Wan LoRA training."""

__version__ = "0.1.0"
