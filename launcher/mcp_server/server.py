"""The FastMCP app and its stdio transport."""

from __future__ import annotations

import io
import os
import sys

INSTRUCTIONS = """LoRA Gym trains Wan 2.1/2.2 LoRAs. Work in this order: list_presets -> plan (dry run) ->
check_dataset -> estimate -> show the user the estimate and get a yes -> start with its estimate_id -> status /
logs -> pull -> report_path. Nothing paid starts without the estimate_id (or estimate_usd) the user saw. An error
result's text is the CLI's `error:` line; its `input` names the argument to change. The guide is the resource
lora-gym://docs/mcp (AGENTS.md points to it); the preset keys and their bounds are lora-gym://schema."""


def build():
    """The server: every tool (launcher/mcp_server/tools.py) and resource."""
    from mcp.server.fastmcp import FastMCP

    from launcher.mcp_server import resources, tools
    from launcher.mcp_server.calls import tool

    app = FastMCP("lora-gym", instructions=INSTRUCTIONS, log_level="WARNING")
    for fn in tools.TOOLS:
        app.add_tool(tool(fn), name=fn.__name__, description=fn.__doc__)
    resources.register(app)
    return app


def serve() -> int:
    """Serve on stdio. The protocol keeps the real stdout; file descriptor 1 becomes stderr, so nothing a
    backend or a child process prints (a container's logs, a progress bar) can corrupt a message."""
    protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(protocol, encoding="utf-8", write_through=True)
    build().run("stdio")
    return 0
