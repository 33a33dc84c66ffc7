"""`launcher mcp`: a Model Context Protocol server on stdio over the same functions the CLI commands call.

The `mcp` SDK (the optional extra lora-gym[mcp]) is imported only here, by `launcher mcp`, so `launcher --help`
and every other command stay as fast as before (tests/test_imports.py).
"""
