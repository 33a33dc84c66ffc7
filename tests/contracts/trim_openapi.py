"""Trim a provider's published OpenAPI document to the operations we call, changing nothing that is kept.

    python tests/contracts/trim_openapi.py FULL.json OUT.json SOURCE.json "get /v2/pods/{id}" "post /v2/pods" ...

Kept as published: `openapi`, `info`, `servers`, `security`; each named operation whole, with its path item's
shared `parameters`; every component those reference, transitively (`security` names securitySchemes). Nothing
is edited, added or reordered inside what is kept. SOURCE.json becomes the `x-lora-gym-source` field: where
the document came from, which commit or date, and when it was taken (see tests/contracts/README.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TOP = ("openapi", "info", "externalDocs", "servers", "security")


def refs(node) -> set[str]:
    """Every `$ref` value anywhere under node."""
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for k, v in node.items() if k != "$ref"))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def lookup(doc: dict, ref: str):
    node = doc
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def closure(doc: dict, start) -> set[str]:
    """The local refs reachable from start, following each referenced component in turn."""
    seen, todo = set(), list(refs(start))
    while todo:
        ref = todo.pop()
        if ref in seen or not ref.startswith("#/"):
            continue
        seen.add(ref)
        todo += refs(lookup(doc, ref))
    return seen


def trim(full: dict, operations: list[tuple[str, str]], source: dict) -> dict:
    out = {"x-lora-gym-source": source, **{k: full[k] for k in TOP if k in full}, "paths": {}}
    for method, path in operations:
        item = full["paths"][path]
        kept = out["paths"].setdefault(path, {k: v for k, v in item.items() if k == "parameters"})
        kept[method] = item[method]
    needed = closure(full, out["paths"])
    for requirement in out.get("security", []):
        needed |= {f"#/components/securitySchemes/{name}" for name in requirement}
    components: dict = {}
    for section, entries in full.get("components", {}).items():
        for name, value in entries.items():
            if f"#/components/{section}/{name}" in needed:
                components.setdefault(section, {})[name] = value
    out["components"] = components
    return out


def main(argv: list[str]) -> None:
    full_path, out_path, source_path, *ops = argv
    full = json.loads(Path(full_path).read_text(encoding="utf-8"))
    source = json.loads(Path(source_path).read_text(encoding="utf-8"))
    operations = [(op.split(" ", 1)[0].lower(), op.split(" ", 1)[1]) for op in ops]
    text = json.dumps(trim(full, operations, source), indent=2, ensure_ascii=False)
    Path(out_path).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
