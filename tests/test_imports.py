"""`launcher --help`, `presets ...` and `run --dry-run` must not import heavy SDKs: a blocker proves it.

Each command runs in a fresh interpreter whose import system refuses the heavy modules, so an import
anywhere on these paths fails the command; the test also checks none ended up in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import EXAMPLE_DATASET, clean_env

HEAVY = ("modal", "docker", "httpx", "google.genai", "replicate", "boto3", "botocore", "torch", "safetensors",
         "numpy", "PIL", "av", "requests", "huggingface_hub", "sky", "mcp")

DRIVER = """
import importlib.abc, json, sys
HEAVY = {heavy!r}

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in HEAVY):
            raise ImportError(f"blocked heavy import: {{name}}")
        return None

sys.meta_path.insert(0, Blocker())
from launcher.cli.main import main
code = main({argv!r})
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in HEAVY))
print("LOADED=" + json.dumps(loaded), file=sys.stderr)
sys.exit(code)
"""

COMMANDS = [
    ["--help"],
    ["presets", "list"],
    ["presets", "show", "wan22-i2v-lightning"],
    ["run", "--help"],
    ["caption", "--help"],
    ["dataset", "--help"],
    ["mcp", "--help"],  # the MCP SDK is imported only when `launcher mcp` serves
    ["run", "--preset", "wan22-t2v-lightning", "--expert", "both", "--dataset", str(EXAMPLE_DATASET), "--dry-run"],
    ["run", "--preset", "wan21-i2v-720p", "--dataset", str(EXAMPLE_DATASET), "--dry-run", "--format", "json"],
    ["run", "--preset", "wan21-t2v-1.3b", "--dataset", str(EXAMPLE_DATASET), "--dry-run", "--backend", "local",
     "--output", "out"],
    ["run", "--preset", "wan22-t2v-lightning", "--expert", "both", "--dataset", str(EXAMPLE_DATASET), "--dry-run",
     "--backend", "modal", "--image", "ghcr.io/you/lora-gym-wan22:0.1.0"],
    ["run", "--preset", "wan22-t2v-lightning", "--expert", "both", "--dataset", str(EXAMPLE_DATASET), "--dry-run",
     "--backend", "runpod", "--max-cost", "20", "--image", "ghcr.io/you/lora-gym-wan22:0.1.0"],
    ["run", "--preset", "wan22-t2v-lightning", "--expert", "high", "--dataset", str(EXAMPLE_DATASET), "--dry-run",
     "--backend", "skypilot", "--spot", "--gpus-per-run", "2", "--image", "ghcr.io/you/lora-gym-wan22:0.1.0"],
    ["sweep", "--help"],
    *(["sweep", "--preset", "wan22-t2v-lightning", "--expert", "low", "--dataset", str(EXAMPLE_DATASET), "--grid",
       "experts.low.learning_rate=5e-5,1e-4", "--dry-run", "--backend", backend, "--image",
       "ghcr.io/you/lora-gym-wan22:0.1.0", *(["--output", "out"] if backend == "local" else [])]
      for backend in ("local", "modal", "runpod")),
]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_command_runs_with_heavy_imports_blocked(argv):
    result = subprocess.run([sys.executable, "-c", DRIVER.format(heavy=HEAVY, argv=argv)],
                            capture_output=True, text=True, env=clean_env())
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stderr.rsplit("LOADED=", 1)[1])
    assert loaded == []


def test_blocker_really_blocks():
    # The same driver around a command that imports a blocked module must fail: the test can fail.
    script = DRIVER.format(heavy=HEAVY, argv=["--help"])
    script = script.replace("from launcher.cli.main", "import numpy\nfrom launcher.cli.main")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env())
    assert result.returncode != 0 and "blocked heavy import: numpy" in result.stderr


def test_help_does_not_even_load_pydantic():
    script = DRIVER.format(heavy=("pydantic",), argv=["--help"])
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=clean_env())
    assert result.returncode == 0, result.stderr
