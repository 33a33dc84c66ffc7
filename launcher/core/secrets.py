"""The secret environment variables, named once: their values never reach a log, run.json, a run record,
a platform request body or `--dry-run` output."""

from __future__ import annotations

from collections.abc import Mapping

SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GEMINI_API_KEY", "REPLICATE_API_TOKEN", "RUNPOD_API_KEY",
               "RUNPOD_S3_SECRET_ACCESS_KEY", "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "AWS_SECRET_ACCESS_KEY",
               "WANDB_API_KEY", "SKYPILOT_DOCKER_PASSWORD")


def secret_values(environ: Mapping[str, str]) -> dict[str, str]:
    """name -> value of each secret set in `environ` (values shorter than 4 characters are not worth matching)."""
    return {name: environ[name] for name in SECRET_VARS if len(environ.get(name, "")) >= 4}
