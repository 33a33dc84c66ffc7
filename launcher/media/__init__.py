"""Media inspection for `launcher dataset check|prepare`: probing headers, musubi-tuner's buckets, the report.

Nothing here is imported by `launcher --help`, `presets ...` or `run --dry-run`: Pillow and PyAV are optional
(the `dataset` extra), so the modules that need them import them inside their functions, and
`require()` turns a missing one into one `error:` line instead of a traceback.
"""

from __future__ import annotations

from launcher.core import extras

TRAIN_FPS = 16  # Wan 2.1 and 2.2 are trained on 16 fps clips


def require(hint: str = "") -> None:
    """UserError unless Pillow and PyAV can be imported (checked without importing them)."""
    extras.require("dataset", {"PIL": "Pillow", "av": "PyAV"}, "checking media", hint)
