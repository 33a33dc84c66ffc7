"""The UI form of an API-format workflow: what ComfyUI's "Load" / drag-and-drop opens as a graph.

The shape follows the workflows ComfyUI ships (comfyui-workflow-templates 0.1.94, e.g. video_wan2_2_14B_t2v.json,
format version 0.4): each node lists its link inputs ({name, type, link}) and outputs ({name, type, links,
slot_index}); its widget values go in `widgets_values` in the order the node defines its widget inputs, with one
extra value after a seed whose definition has control_after_generate ("fixed": keep the run's seed); `links` rows
are [id, from node, from slot, to node, to slot, type]. Loader nodes carry `properties.models` (name, url,
directory), from which ComfyUI's frontend offers to download a missing file.
"""

from __future__ import annotations

import functools
import json
import uuid
from importlib import resources

WIDGETS = ("INT", "FLOAT", "STRING", "COMBO")
COLUMN, ROW = 380, 180


@functools.cache
def definitions() -> dict:
    """comfyui_nodes.json: the nodes' inputs and outputs at the pinned ComfyUI release."""
    return json.loads(resources.files(__package__).joinpath("comfyui_nodes.json").read_text(encoding="utf-8"))


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def widget_values(class_type: str, inputs: dict) -> list:
    values = []
    for spec in definitions()["nodes"][class_type]["inputs"]:
        if spec["type"] not in WIDGETS:
            continue
        values.append(inputs.get(spec["name"], spec.get("default")))
        if spec.get("control_after_generate"):
            values.append("fixed")
    return values


def _depths(api: dict) -> dict[str, int]:
    """Each node's column: one right of the deepest node it reads from."""
    depth: dict[str, int] = {}

    def of(node_id: str) -> int:
        if node_id not in depth:
            sources = [v[0] for v in api[node_id]["inputs"].values() if is_link(v)]
            depth[node_id] = 1 + max((of(s) for s in sources), default=-1)
        return depth[node_id]

    for node_id in api:
        of(node_id)
    return depth


def _positions(api: dict) -> dict[str, list[int]]:
    depths, rows, where = _depths(api), {}, {}
    for node_id in sorted(api, key=int):
        row = rows.get(depths[node_id], 0)
        rows[depths[node_id]] = row + 1
        where[node_id] = [depths[node_id] * COLUMN, row * ROW]
    return where


def _links(api: dict) -> list[list]:
    outputs = {cls: [o[1] for o in spec["outputs"]] for cls, spec in definitions()["nodes"].items()}
    rows = []
    for to_id in sorted(api, key=int):
        link_inputs = [s["name"] for s in definitions()["nodes"][api[to_id]["class_type"]]["inputs"]
                       if s["type"] not in WIDGETS]
        for name, value in api[to_id]["inputs"].items():
            if is_link(value):
                source, slot = value
                rows.append([len(rows) + 1, int(source), slot, int(to_id), link_inputs.index(name),
                             outputs[api[source]["class_type"]][slot]])
    return rows


def _node(node_id: str, node: dict, links: list[list], where: list[int], order: int, downloads: dict) -> dict:
    spec = definitions()["nodes"][node["class_type"]]
    incoming = {(row[3], row[4]): row[0] for row in links}
    link_specs = [s for s in spec["inputs"] if s["type"] not in WIDGETS]
    inputs = [{"name": s["name"], "type": s["type"], "link": incoming.get((int(node_id), slot))}
              for slot, s in enumerate(link_specs)]
    outputs = [{"name": name, "type": kind, "links": [r[0] for r in links if r[1] == int(node_id) and r[2] == slot],
                "slot_index": slot} for slot, (name, kind) in enumerate(spec["outputs"])]
    values = widget_values(node["class_type"], node["inputs"])
    properties = {"Node name for S&R": node["class_type"]}
    files = [downloads[v] | {"name": v} for v in values if isinstance(v, str) and v in downloads]
    if files:
        properties["models"] = files
    return {"id": int(node_id), "type": node["class_type"], "pos": where, "size": [320, 110 + 24 * len(values)],
            "flags": {}, "order": order, "mode": 0, "title": node["_meta"]["title"], "inputs": inputs,
            "outputs": outputs, "properties": properties, "widgets_values": values}


def ui_workflow(api: dict, downloads: dict[str, dict], name: str) -> dict:
    """`downloads`: a file name used by a loader -> {"url", "directory"}; `name` makes the workflow's stable id."""
    links, where, depths = _links(api), _positions(api), _depths(api)
    ordered = sorted(api, key=lambda n: (depths[n], int(n)))
    nodes = [_node(n, api[n], links, where[n], ordered.index(n), downloads) for n in sorted(api, key=int)]
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"lora-gym:{name}")), "revision": 0,
            "last_node_id": max(int(n) for n in api), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}
