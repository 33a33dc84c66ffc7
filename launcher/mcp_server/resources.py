"""The resources: the preset schema (every key with its type and bounds), each preset, and the docs."""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path

SCHEMA_URI = "lora-gym://schema"
REPO_ROOT = Path(__file__).resolve().parents[2]


def preset_schema() -> str:
    """The JSON schema of a preset, from the same pydantic model that validates every preset and override:
    its minimum/maximum/pattern/enum are the bounds `--set KEY=VALUE` is checked against."""
    from launcher.core.schema import Preset

    schema = Preset.model_json_schema()
    schema["description"] = ("Every key of a preset; an override is its dotted path, e.g. train.max_train_epochs=30. "
                             "Checks across keys (launcher/core/schema.py cross_checks) also apply.")
    return json.dumps(schema, indent=2)


def preset_toml(name: str) -> str:
    """A shipped preset, resolved (defaults filled in), as `launcher presets show NAME` prints it."""
    import tomli_w

    from launcher.core.presets import load_preset

    loaded = load_preset(name)
    return f"# {loaded.origin} (sha256 {loaded.content_hash[:12]})\n" + tomli_w.dumps(
        loaded.preset.model_dump(mode="json", exclude_none=True))


def readme_text() -> str:
    """The README of this checkout, else the installed package's long description (the same file)."""
    path = REPO_ROOT / "README.md"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    return metadata.metadata("lora-gym").get_payload() or ""  # type: ignore[attr-defined]


def doc_sections() -> dict[str, tuple[str, str]]:
    """slug -> (title, text) of the assistant guide (guide.md, shipped in the package), of each `## ` section
    of the README and, in a checkout, of each page of the documentation (docs/*.md, slug = file name), which
    holds what the short README leaves out."""
    from importlib import resources

    guide = resources.files("launcher.mcp_server").joinpath("guide.md").read_text(encoding="utf-8")
    sections = {"mcp": ("Training from an AI assistant", guide)}
    for block in re.split(r"(?m)^(?=## )", readme_text()):
        if block.startswith("## "):
            title = block.splitlines()[0][3:].strip()
            sections[re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")] = (title, block)
    for page in sorted((REPO_ROOT / "docs").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), page.stem)
        sections[page.stem] = (title, text)
    return sections


def register(app) -> None:
    """Add every resource to a FastMCP app: one per preset and per docs section, so a client lists them all."""
    from mcp.server.fastmcp.resources import FunctionResource

    from launcher.core.presets import preset_names

    app.add_resource(FunctionResource(uri=SCHEMA_URI, name="preset-schema", mime_type="application/json",
                                      description="Every preset key with its type and bounds", fn=preset_schema))
    for name in preset_names():
        app.add_resource(FunctionResource(uri=f"lora-gym://presets/{name}", name=f"preset {name}",
                                          mime_type="application/toml", description=f"The preset {name}, resolved",
                                          fn=lambda name=name: preset_toml(name)))
    for slug, (title, text) in doc_sections().items():
        app.add_resource(FunctionResource(uri=f"lora-gym://docs/{slug}", name=f"docs: {title}",
                                          mime_type="text/markdown", fn=lambda text=text: text))
