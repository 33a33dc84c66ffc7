"""Media inspection for `launcher dataset check|prepare`: probing headers, musubi-tuner's buckets, the report.

Nothing here is imported by `launcher --help`, `presets ...` or `run --dry-run`: Pillow and PyAV are optional
(`pip install 'lora-gym[dataset]'`), so the modules that need them import them inside their functions, and
`require()` turns a missing one into one `error:` line instead of a traceback.
"""

from __future__ import annotations

import importlib.util

from launcher.core.errors import UserError

TRAIN_FPS = 16  # Wan 2.1 and 2.2 are trained on 16 fps clips


def require(hint: str = "") -> None:
    """UserError unless Pillow and PyAV can be imported (checked without importing them)."""
    missing = [name for module, name in (("PIL", "Pillow"), ("av", "PyAV")) if importlib.util.find_spec(module) is None]
    if missing:
        raise UserError(f"checking media needs {' and '.join(missing)}: pip install 'lora-gym[dataset]'{hint}")
