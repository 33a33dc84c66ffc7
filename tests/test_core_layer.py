"""launcher/core is the bottom layer (the plan is a pure function of presets and data): it imports the standard
library, third-party packages, its own modules, the musubi contract (data), and launcher/weights/fetch.py's
sha256_file, the one implementation, which stays in that standalone script because the image build copies it
alone (images/Dockerfile). Nothing else of the launcher: backends, media, runs, the CLI sit above it."""

from __future__ import annotations

import ast

from conftest import ROOT

ALLOWED = ("launcher.core", "launcher.contract", "launcher.weights.fetch")


def launcher_imports(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "launcher":
                names += [f"launcher.{alias.name}" for alias in node.names]
            elif node.module.startswith("launcher."):
                names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names if alias.name.split(".")[0] == "launcher"]
    return names


def test_core_imports_nothing_above_it():
    reaching = [f"{path.name}: {name}" for path in sorted((ROOT / "launcher" / "core").glob("*.py"))
                for name in launcher_imports(path.read_text())
                if not any(name == allowed or name.startswith(allowed + ".") for allowed in ALLOWED)]
    assert reaching == []


def test_the_layer_check_sees_every_import_form():
    source = ("from launcher import runs\nfrom launcher.media.buckets import STEP\nimport launcher.cli.main\n"
              "def f():\n    from launcher.backends import labels\n")
    assert launcher_imports(source) == ["launcher.runs", "launcher.media.buckets", "launcher.cli.main",
                                        "launcher.backends"]
