"""The inputs of a run, as one JSON-schema'd argument: the flags of `launcher run`, with the same bounds.

No `from __future__ import annotations` here: the SDK reads these annotations at run time.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from launcher.backends import backend_names

Backend = Literal[tuple(backend_names())]


class RunRequest(BaseModel):
    """What `launcher run` takes; None means the same default as the command line."""

    model_config = ConfigDict(extra="forbid")

    preset: Annotated[str, Field(description="A preset name (tool list_presets) or a .toml path.")]
    dataset: Annotated[str, Field(description="Folder of images/videos with a .txt caption beside each.")]
    expert: Annotated[Literal["high", "low", "both"] | None,
                      Field(description="Wan 2.2 only: which expert to train; both caches once, trains both.")] = None
    overrides: Annotated[list[str], Field(description="Preset overrides KEY=VALUE (the CLI's --set), e.g. "
                                                      "train.max_train_epochs=30; bounds: resource lora-gym://schema")
                         ] = []
    gpu_memory: Annotated[int | None, Field(ge=8, le=1024, description="GPU memory to fit, in GB.")] = None
    gpus_per_run: Annotated[int | None, Field(ge=1, le=8, description="GPUs per training (data-parallel).")] = None
    samples_file: Annotated[str | None, Field(description="Extra sample prompts file, one per line.")] = None
    backend: Annotated[Backend | None, Field(description="Where to run: local (Docker/Podman here), modal, runpod, "
                                                         "skypilot; plan without one shows the plan only.")] = None
    output: Annotated[str | None, Field(description="local: folder for the run folders.")] = None
    image: Annotated[str | None, Field(description="Image reference instead of the default.")] = None
    gpus: Annotated[str, Field(description="local: all, none, or GPU ids such as 0,1.")] = "all"
    cache_volume: Annotated[str | None, Field(description="local: named volume for caches.")] = None
    gpu_type: Annotated[str | None, Field(description="modal/runpod: the platform's GPU type.")] = None
    max_hours: Annotated[float | None, Field(gt=0, le=720, description="Stop the run after this long.")] = None
    max_cost: Annotated[float | None, Field(gt=0, le=100_000, description="USD: refuse to start if the estimate "
                                                                         "is higher, stop when reached.")] = None
    volume: Annotated[str | None, Field(description="runpod: network volume id; skypilot: the bucket.")] = None
    spot: Annotated[bool, Field(description="skypilot: spot instances.")] = False

    def key(self) -> dict:
        """Every input that changes what runs or what it costs (an estimate id covers exactly these)."""
        return self.model_dump(mode="json")
