"""The launcher's state folder on this machine: the run registry, cached catalogs and hashes, ids it keeps."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """`$LORA_GYM_HOME`, default `~/.local/state/lora-gym`."""
    return Path(os.environ.get("LORA_GYM_HOME") or Path.home() / ".local" / "state" / "lora-gym")
