"""One tool call: the CLI's own function runs with its printed output captured, and comes back as a tool result.

Stdout is the protocol channel, so nothing a command prints may reach it: what it prints (stdout and stderr) is
the result's `output`. A launcher.core.errors.UserError becomes an error result whose text is the same `error:`
lines the CLI prints, with `input` naming the argument to change. No secret value leaves in a result.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import json
import os
import re

from launcher.core.errors import INPUT_ERRORS, UserError, input_problem
from launcher.core.secrets import secret_values

# The CLI's flags, as the tools' argument names: messages are written for the command line.
FLAG_INPUTS = {"--preset": "preset", "--expert": "expert", "--dataset": "dataset", "--set": "overrides",
               "--gpu-memory": "gpu_memory", "--gpus-per-run": "gpus_per_run", "--samples": "samples_file",
               "--backend": "backend", "--output": "output", "--image": "image", "--gpu": "gpu_type",
               "--max-hours": "max_hours", "--max-cost": "max_cost", "--volume": "volume", "--anchor": "anchor",
               "--provider": "provider", "--model": "model", "--prompt-file": "prompt_file",
               "--overwrite": "overwrite", "--gpu-ids": "gpus", "--cache-volume": "cache_volume"}
# A dotted preset key (train.learning_rate) is changed with an override.
PRESET_KEY = re.compile(r"\b(?:model|train|network|dataset|resources|samples|experts|optimizer)\.[a-z_.]+")


class InputError(UserError):
    """A UserError of the server itself that knows which tool argument to change."""

    def __init__(self, *problems: str, input_name: str | None = None):
        super().__init__(*problems)
        self.input_name = input_name


def input_named(message: str, arguments: dict) -> str | None:
    """The tool argument a one-line message asks to change: a CLI flag it names, a preset key (an override),
    or an argument whose value it quotes; None when it names none."""
    def present(name: str) -> str | None:  # `dataset` or `run.dataset`
        return next((key for key in arguments if key.rsplit(".", 1)[-1] == name), None)

    for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", message):
        if flag in FLAG_INPUTS and (found := present(FLAG_INPUTS[flag])):
            return found
    if PRESET_KEY.search(message) and (found := present("overrides")):
        return found
    for name, value in arguments.items():
        if isinstance(value, str) and len(value) >= 2 and value in message:
            return name
    return next((name for name in arguments if re.search(rf"\b{re.escape(name.rsplit('.', 1)[-1])}\b", message)),
                None)


def flat(arguments: dict) -> dict:
    """Tool arguments by the name an assistant changes: a model argument's fields as `run.dataset`."""
    out = {}
    for name, value in arguments.items():
        if hasattr(value, "model_dump"):
            out |= {f"{name}.{key}": item for key, item in value.model_dump().items()}
        else:
            out[name] = value
    return out


def scrubbed(data):
    """`data` (JSON-able) with every secret value of the environment replaced by ***."""
    text = json.dumps(data)
    for value in secret_values(os.environ).values():
        text = text.replace(json.dumps(value)[1:-1], "***")
    return json.loads(text)


def _result(data: dict, error: bool):
    from mcp.types import CallToolResult, TextContent

    data = scrubbed(data)
    text = "\n".join(f"error: {p}" for p in data["errors"]) if error else json.dumps(data, indent=2)
    return CallToolResult(content=[TextContent(type="text", text=text)], structuredContent=data, isError=error)


def tool(fn):
    """Wrap a tool function (it returns a dict of data) into a CallToolResult: its printed output captured,
    its UserError turned into the CLI's one-line messages plus the input to change."""
    from mcp.types import CallToolResult

    @functools.wraps(fn)
    def call(**arguments):
        named_inputs = flat(arguments)
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                data = fn(**arguments)
        except UserError as exc:
            named = getattr(exc, "input_name", None) or next(
                (found for p in exc.problems if (found := input_named(p, named_inputs))), None)
            return _result({"errors": exc.problems, "input": named, "output": printed.getvalue()}, error=True)
        except INPUT_ERRORS as exc:  # as the CLI: a path or file no check foresaw is one line, not a traceback
            line = input_problem(exc, "LORA_GYM_DEBUG=1 launcher mcp")
            return _result({"errors": [line], "input": input_named(line, named_inputs), "output": printed.getvalue()},
                           error=True)
        output = printed.getvalue()
        return _result({**data, "output": output} if output else data, error=False)

    # The SDK reads the arguments' JSON schema from this signature; the result is already a CallToolResult.
    call.__signature__ = inspect.signature(fn).replace(return_annotation=CallToolResult)
    return call
