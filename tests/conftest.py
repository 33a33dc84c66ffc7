"""Shared fixtures. Secrets are scrubbed from the environment of every test and every subprocess."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKES = ROOT / "tests" / "fakes"
EXAMPLE_DATASET = ROOT / "examples" / "dataset"
SECRET_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "GEMINI_API_KEY", "REPLICATE_API_TOKEN", "RUNPOD_API_KEY",
               "MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


@pytest.fixture(autouse=True)
def _scrub_secrets(monkeypatch):
    for name in SECRET_VARS:
        monkeypatch.delenv(name, raising=False)


def clean_env(**extra: str) -> dict[str, str]:
    """The current environment without secrets or LORA_GYM_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_VARS and not k.startswith("LORA_GYM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env | extra


@pytest.fixture
def dataset(tmp_path) -> Path:
    """A private copy of the example dataset (4 images, 2 videos, captions) that a test may change."""
    target = tmp_path / "dataset"
    shutil.copytree(EXAMPLE_DATASET, target)
    return target
