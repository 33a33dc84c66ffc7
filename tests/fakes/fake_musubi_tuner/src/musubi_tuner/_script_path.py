"""Run as `python .../src/musubi_tuner/<script>.py`, the fake package must still import itself."""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1])
if SRC not in sys.path:
    sys.path.insert(0, SRC)
