"""benchmarks/gpu_memory.py without a GPU: it refuses in one line, imports torch lazily, and its table rows
put the measurement next to the estimate."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_memory.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_memory_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_refuses_in_one_line():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the benchmark would run")
    done = subprocess.run([sys.executable, str(SCRIPT), "--swaps", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "CUDA GPU" in done.stderr


def test_loading_it_imports_no_torch():
    code = (f"import importlib.util, sys; s = importlib.util.spec_from_file_location('b', {str(SCRIPT)!r}); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); m.parse([]); "
            "print('torch' in sys.modules, 'musubi_tuner' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.stdout.split() == ["False", "False"], done.stderr


def test_rows_compare_measurement_and_estimate():
    bench = load()
    args = bench.parse(["--preset", "wan21-t2v-14b", "--sizes", "960x544x45,832x480x1", "--swaps", "0,20",
                        "--offload", "both"])
    configs = bench.configurations(args)
    assert len(configs) == 8 and configs[0] == {"size": (960, 544, 45), "swap": 0, "offload": False}
    facts = bench.preset_facts("wan21-t2v-14b", "low")
    assert facts["fp8"] and not facts["fp8_scaled"] and facts["rank"] == 24
    est = bench.estimate(facts, configs[0])
    line = bench.row(facts, configs[0], {"device_used_gb": est / 2, "peak_allocated_gb": 1.0, "seconds_per_step": 3.0})
    assert line.startswith("| 960x544x45 | 24,480 | 0 | no |") and "+100%" in line and line.endswith("| 3.00 |")
    assert "OutOfMemoryError" in bench.row(facts, configs[0], {"error": "OutOfMemoryError: CUDA out of memory"})
    assert bench.preset_facts("wan22-t2v-lightning", "low")["fp8_scaled"]
