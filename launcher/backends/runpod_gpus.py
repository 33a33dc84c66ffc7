"""RunPod's GPU types for the RunPod backend: which one a run gets, what it costs, and the catalog a dry run
checks `--gpu` against without a key (the one cached by the last call with a key, else a snapshot of the
GPU types table in RunPod's docs, shipped as runpod_gpu_types.json).
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

from launcher import runs
from launcher.core.errors import UserError, closest
from launcher.core.job import Job

CLOUD = "SECURE"  # RunPod-owned datacenters, where network volumes and the S3 API live
# By preset GPU class, in order of preference; the first one the catalog lists is used unless --gpu says.
GPU_CANDIDATES = {80: ["NVIDIA H100 80GB HBM3", "NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 PCIe"],
                  48: ["NVIDIA L40S", "NVIDIA RTX A6000"], 24: ["NVIDIA GeForce RTX 4090", "NVIDIA L4"]}
# Used without an API key (dry run) or for a GPU missing from the catalog: on-demand $/h per GPU from a
# third-party snapshot, higher than RunPod's own list prices, so a budget check errs on the safe side.
PRICE_SOURCE = "fallback table, deploybase.ai/articles/runpod-gpu-pricing (on-demand, 2026-03-10)"
FALLBACK_PRICES = {"NVIDIA H100 80GB HBM3": 4.76, "NVIDIA H100 PCIe": 3.51, "NVIDIA A100 80GB PCIe": 2.10,
                   "NVIDIA A100-SXM4-80GB": 2.45, "NVIDIA L40S": 1.40, "NVIDIA RTX A6000": 1.22,
                   "NVIDIA GeForce RTX 4090": 0.60, "NVIDIA L4": 0.78}
def candidates(memory_gb: int) -> list[str]:
    """GPU ids with at least `memory_gb` (any size, --gpu-memory), the smallest class first."""
    return [gpu for size in sorted(GPU_CANDIDATES) if size >= memory_gb for gpu in GPU_CANDIDATES[size]]


def choose_gpu(catalog: list[dict], wanted: str | None, memory_gb: int) -> dict:
    """The catalog entry for --gpu (checked, with a did-you-mean), else the preferred one of the smallest class
    that holds `memory_gb`."""
    return ranked_gpus(catalog, wanted, memory_gb)[0]


def ranked_gpus(catalog: list[dict], wanted: str | None, memory_gb: int) -> list[dict]:
    """The GPUs to try, in order: --gpu alone (the user chose it and its price), else every candidate that
    holds `memory_gb` and the catalog lists on the secure cloud, the smallest class and our preference first.
    A create that RunPod refuses for capacity moves on to the next (RunPod's docs: read-then-create)."""
    fitting = candidates(memory_gb)
    if not fitting:
        raise UserError(f"the plan needs a {memory_gb} GB GPU, more than any RunPod GPU class LoRA Gym knows: "
                        "choose one with --gpu, or lower --gpu-memory")
    by_id = {g["id"]: g for g in catalog}
    if wanted:
        found = by_id.get(wanted) or next((g for g in catalog if wanted.lower() in
                                           (g["id"].lower(), _display_name(g))), None)
        if not found:
            raise UserError(f"--gpu {wanted!r} is not a RunPod GPU type{closest(wanted, by_id)}: "
                            f"use an id such as {GPU_CANDIDATES[80][0]!r} (RunPod's list: "
                            "https://docs.runpod.io/references/gpu-types)")
        if (found.get("memory") or memory_gb) < memory_gb:
            raise UserError(f"--gpu {found['id']!r} has {found['memory']} GB, the preset needs a {memory_gb} GB GPU: "
                            f"pick one such as {fitting[0]!r}")
        return [found]
    ranked = [by_id[c] for c in fitting if c in by_id and by_id[c].get("secure", True)]
    if ranked:
        return ranked
    raise UserError(f"RunPod's catalog lists none of {', '.join(fitting)}: choose one with --gpu")


HOST_RAM_SAID_GB = 16  # plans without block swap need about this much, which every GPU machine has


def host_ram_note(job: Job) -> str:
    # RunPod's v2 CreatePodRequest takes no RAM for GPU pods (CreateGpuConfig: id, count, CUDA constraints;
    # only CPU pods have `memory`): RAM comes with the GPU type's machine, so it can only be said, not asked.
    return (f"# host RAM: the plan needs about {job.plan.resources.host_memory_gb} GB (block swap, activation "
            "offload); RunPod's pod API cannot request RAM for a GPU pod: it comes with the --gpu type's machine")


def _display_name(gpu: dict) -> str:
    # `name` ("RTX 4090") in both the v2 catalog (GpuType in api-reference-v2/openapi.json: id, name, memory,
    # ...; `displayName` is the GraphQL gpuTypes field, sdks/graphql/manage-pods.mdx) and our docs snapshot.
    return str(gpu.get("name") or "").lower()


def unknown_but_not_misspelled(wanted: str, catalog: list[dict]) -> bool:
    ids = [g["id"] for g in catalog]
    known = {i.lower() for i in ids} | {_display_name(g) for g in catalog}
    return wanted.lower() not in known and not closest(wanted, ids)


def price_of(gpu: dict) -> tuple[float, str]:
    price = (gpu.get("price") or {}).get(CLOUD.lower())
    if price:
        return float(price), f"RunPod catalog, {CLOUD.lower()} cloud, {datetime.now(UTC):%Y-%m-%d}"
    return FALLBACK_PRICES.get(gpu["id"], max(FALLBACK_PRICES.values())), PRICE_SOURCE


def catalog_cache() -> Path:
    """Where the last catalog fetched with a key is kept, so dry runs check --gpu without a key or network."""
    return runs.home() / "runpod-gpu-types.json"


def save_catalog(gpus: list[dict]) -> None:
    fields = ("id", "name", "memory", "secure", "price")  # GpuType's, as GET /v2/catalog/gpus sends them
    data = {"fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "gpus": [{k: g[k] for k in fields if k in g} for g in gpus]}
    with contextlib.suppress(OSError):  # a cache: failing to write it must not stop a launch
        catalog_cache().parent.mkdir(parents=True, exist_ok=True)
        tmp = catalog_cache().with_name(f".{catalog_cache().name}.partial")
        tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, catalog_cache())


def offline_catalog() -> tuple[list[dict], str]:
    """(GPU types, where they come from): the catalog cached by the last call with a key, else the snapshot of
    RunPod's GPU types table shipped with LoRA Gym. No key, no network: what dry runs check --gpu against."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(catalog_cache().read_text(encoding="utf-8"))
        return list(data["gpus"]), f"RunPod's catalog as fetched {data['fetched_at'][:10]}"
    from importlib import resources

    snapshot = json.loads(resources.files(__package__).joinpath("runpod_gpu_types.json").read_text("utf-8"))
    return [dict(g, price={}) for g in snapshot["gpus"]], f"the GPU types table of RunPod's docs, {snapshot['date']}"
