"""`launcher mcp`: the launcher as a Model Context Protocol server on stdio, for AI assistants."""

from __future__ import annotations

import click


@click.command(epilog="""\b
Examples (an assistant's MCP configuration starts it; it reads requests on stdin):
  launcher mcp
  claude mcp add lora-gym -- launcher mcp""")
def mcp():
    """Serve the launcher's tools (presets, plan, dataset check, caption, estimate, start, status, logs, stop, pull,
    report) and resources (preset schema, presets, docs) on stdio. Needs the mcp extra. A paid run starts only with
    the estimate the user was shown passed back; see AGENTS.md."""
    from launcher.core import extras

    extras.require("mcp", {"mcp": "the Model Context Protocol SDK (mcp)"}, "launcher mcp")
    from launcher.mcp_server.server import serve

    return serve()
