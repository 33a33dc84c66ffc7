"""The captioning instructions: shared rules + LoRA-type rules + image or video instructions, from prompts/.

The methodology lives as text in prompts/*.md so it can be read and reviewed as prose; `{anchor}` and `{media}`
("image" or "video") are filled in here. A user prompt file replaces all of it, with the same two placeholders.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from launcher.caption import LORA_TYPES
from launcher.core.errors import UserError
from launcher.core.inputs import existing_file

KINDS = ("image", "video")


def _text(name: str) -> str:
    # importlib.resources: the .md files ship as package data, so this works from a wheel as well as a checkout.
    return resources.files("launcher.caption").joinpath("prompts", name).read_text(encoding="utf-8").strip()


def fill(template: str, anchor: str, kind: str) -> str:
    # str.replace, not str.format: a user's prompt may contain other braces (JSON examples, say).
    return template.replace("{anchor}", anchor).replace("{media}", kind).strip()


def anchor_pattern(anchor: str) -> re.Pattern:
    """Matches the anchor as a whole word (or words), in any case: `annika` in "Annika's", not in "annikas"."""
    words = r"\s+".join(re.escape(word) for word in anchor.split())
    return re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)


def clean_caption(text: str) -> str:
    """One line, without the wrapping quotes or "Caption:" label that models sometimes add."""
    text = _unquote(" ".join(text.split()))
    return _unquote(re.sub(r"^caption\s*:\s*", "", text, flags=re.IGNORECASE))


def _unquote(text: str) -> str:
    return text[1:-1].strip() if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" else text


def builtin_prompt(anchor: str, lora_type: str, kind: str) -> str:
    if lora_type not in LORA_TYPES or kind not in KINDS:
        raise ValueError(f"unknown LoRA type {lora_type!r} or media kind {kind!r}")
    template = "\n\n".join(_text(f"{name}.md") for name in ("base", lora_type, kind))
    return fill(template, anchor, kind)


def read_prompt_file(path: Path, anchor: str) -> str:
    """The user's template, checked: readable UTF-8, not empty, and asking for the anchor somehow."""
    existing_file(path, "prompt file", "pass a text file with your instructions ({anchor} and {media} are "
                  "filled in)")
    try:
        template = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"prompt file {path} cannot be read as UTF-8 text ({exc.__class__.__name__}): "
                        "re-save it as UTF-8") from None
    if not template:
        raise UserError(f"prompt file {path} is empty: write the captioning instructions in it")
    if "{anchor}" not in template and not anchor_pattern(anchor).search(template):
        # Every caption must contain the anchor, so a prompt that never asks for it would fail every file.
        raise UserError(f"prompt file {path} never mentions the anchor: write {{anchor}} where the anchor word "
                        "belongs (it is filled in with --anchor)")
    return template


def prompts_for(anchor: str, lora_type: str, prompt_file: Path | None = None) -> dict[str, str]:
    """{"image": prompt, "video": prompt}: what every file of that kind is sent with."""
    if prompt_file is None:
        return {kind: builtin_prompt(anchor, lora_type, kind) for kind in KINDS}
    template = read_prompt_file(prompt_file, anchor)
    return {kind: fill(template, anchor, kind) for kind in KINDS}
