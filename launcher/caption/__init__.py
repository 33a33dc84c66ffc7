"""`launcher caption`: write a LoRA-training caption beside every image and video of a dataset folder.

This module stays import-light (no SDKs): the CLI reads these tables to build its options and help.
core.py runs the job, prompts.py builds the instructions, gemini.py and replicate_provider.py talk to the
services; a provider module (and its SDK) is imported only when a real run uses it.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass

from launcher.core import extras
from launcher.core.errors import UserError

LORA_TYPES = ("character", "style", "motion", "object")


@dataclass(frozen=True)
class ProviderInfo:
    """What the CLI needs to know about a provider before importing it."""

    key_var: str  # the environment variable holding the API key
    base_url_var: str  # optional endpoint override: a proxy, or the loopback fakes in tests/
    default_model: str
    target: str  # "module:class" implementing the Provider interface (core.Provider)


PROVIDERS = {
    # gemini-3.8-flash: the Flash model that google-genai 3.4's own docstrings and model list lead with.
    "gemini": ProviderInfo("GEMINI_API_KEY", "GEMINI_BASE_URL", "gemini-3.8-flash",
                           "launcher.caption.gemini:GeminiProvider"),
    # google/gemini-2.5-flash on Replicate takes `prompt` plus `images` / `videos` lists of file URLs.
    "replicate": ProviderInfo("REPLICATE_API_TOKEN", "REPLICATE_BASE_URL", "google/gemini-2.5-flash",
                              "launcher.caption.replicate_provider:ReplicateProvider"),
}


REPLICATE_REF = re.compile(r"^([\w.-]+/[\w.-]+)(?::(\w+))?$")


def parse_replicate_ref(ref: str) -> tuple[str, str | None]:
    """("owner/name", version or None) from `owner/name[:version]`."""
    match = REPLICATE_REF.match(ref)
    if not match:
        raise UserError(f"--model {ref!r} is not a Replicate model: write owner/name or owner/name:version")
    return match.group(1), match.group(2)


def check_model(provider: str, model: str | None) -> None:
    if model is not None and not model.strip():
        raise UserError(f"--model is empty: name a model, or leave it out for {PROVIDERS[provider].default_model}")
    if provider == "replicate" and model:
        parse_replicate_ref(model)


def open_provider(name: str, model: str | None, caller, env=os.environ):
    """(provider, its API key) for a real run: the key comes from the environment, never from the command line."""
    info = PROVIDERS[name]
    key = env.get(info.key_var, "").strip()
    if not key:
        raise UserError(f"{info.key_var} is not set: export {info.key_var}=<your key> to caption with {name} "
                        "(or add --dry-run to list what would be captioned)")
    module_name, class_name = info.target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"the {name} client library is missing ({exc.name}): "
                        f"{extras.install_command('dataset')}") from None
    provider = getattr(module, class_name)(api_key=key, model=model or info.default_model, caller=caller,
                                           base_url=env.get(info.base_url_var) or None)
    return provider, key
