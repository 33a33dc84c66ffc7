"""The LoRA files a publish uploads, as musubi-tuner wrote them (no conversion), and a check of their format.

The format facts live in lora_format.json (musubi's naming, and how ComfyUI and diffusers read it, each cited);
tests/test_publish_lora_format.py holds the format against ComfyUI's key map and diffusers' own converter. Here
each file's safetensors header (8-byte length + JSON, no tensor read) is checked to be in that format, so a file
that loads partially anywhere is refused before upload.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from launcher.core.errors import UserError
from launcher.publish.source import EPOCH, EXPERTS, Run, check_output

CHECKPOINTS = "checkpoints"


@functools.cache
def facts() -> dict:
    return json.loads(resources.files(__package__).joinpath("lora_format.json").read_text(encoding="utf-8"))


@dataclass(frozen=True)
class LoraFile:
    path: Path
    repo_path: str
    expert: str | None  # "high"/"low" for Wan 2.2, None for Wan 2.1
    epoch: int | None  # None: the last epoch (musubi's plain `<name>.safetensors`)
    size: int = 0
    sha256: str = ""  # as run.json records it, checked against the file


def expert_of(name: str) -> str | None:
    stem = EPOCH.sub("", name).removesuffix(".safetensors")
    return next((e for e in EXPERTS if stem.endswith(f"-{e}")), None)


def _tensor_names(path: Path) -> list[str]:
    """The tensor names of a LoRA file, read from its header by the LoRA check's reader."""
    from launcher.loracheck import NotSafetensors, read_header

    try:
        return list(read_header(path, "LoRA").tensors)
    except NotSafetensors as exc:
        raise UserError(f"{exc}: pull the run again") from None


def format_problem(keys: list[str], network_module: str) -> str | None:
    """Why these tensor names are not the musubi LoRA format ComfyUI and diffusers read, or None."""
    musubi = facts()["musubi"]
    prefix = musubi["prefix"]["value"] + "_"
    if not keys:
        return "it holds no tensor"
    stray = [k for k in keys if not k.startswith(prefix)]
    if stray:
        return f"{len(stray)} tensors do not start with {prefix} (e.g. {stray[0]})"
    if network_module != musubi["network_module"]:  # LoHa/LoKr keep the prefix but name their tensors otherwise
        return None
    roles = tuple(musubi["tensors"]["value"])
    modules: dict[str, set[str]] = {}
    for key in keys:
        module, _, role = key.partition(".")
        if role not in roles:
            return f"{key} is no LoRA tensor ({', '.join(roles)})"
        modules.setdefault(module, set()).add(role)
    partial = sorted(m for m, found in modules.items() if len(found) != len(roles))
    return f"{len(partial)} modules lack one of {', '.join(roles)} (e.g. {partial[0]})" if partial else None


def check_format(path: Path, network_module: str) -> None:
    problem = format_problem(_tensor_names(path), network_module)
    if problem:
        raise UserError(f"{path} is not a musubi-tuner LoRA ({problem}): ComfyUI and diffusers would not load all "
                        "of it; publish the files the run wrote")


def lora_files(run: Run, checkpoints: bool) -> list[LoraFile]:
    """The last epoch's LoRA of each trained expert (both experts' for Wan 2.2 `--expert both`), and with
    `checkpoints` every saved epoch under checkpoints/."""
    module = (run.settings.get("train") or {}).get("network_module", facts()["musubi"]["network_module"])
    found = []
    for part in run.parts:
        for output in part.record.get("outputs", []):
            match = EPOCH.search(output["path"])
            if match and not checkpoints:
                continue
            path = check_output(part, output)
            check_format(path, module)
            name = Path(output["path"]).name
            found.append(LoraFile(path, f"{CHECKPOINTS}/{name}" if match else name, expert_of(name),
                                  int(match[1]) if match else None, output["size"], output["sha256"]))
    finals = [f for f in found if f.epoch is None]
    if not finals:
        raise UserError(f"{run.first.folder} has no final LoRA in run.json's outputs: nothing to publish")
    if len({f.repo_path for f in found}) != len(found):
        raise UserError("two run folders hold LoRAs of the same name: publish each folder on its own")
    return sorted(found, key=lambda f: (f.epoch is not None, f.repo_path))
