"""Options shared by several commands, defined once."""

from __future__ import annotations

import click

set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a preset value by its dotted key (repeatable), e.g. --set train.max_train_epochs=30.")

gpu_memory_option = click.option(
    "--gpu-memory", "gpu_memory", type=click.IntRange(8, 1024), metavar="GB",
    help="GPU memory to fit, in GB (any size, e.g. 24, 32, 48) [default: the preset's resources.gpu_memory_gb]; "
         "the plan picks fp8, block swap and activation offload to fit.")


def with_gpu_memory(overrides, gpu_memory: int | None) -> tuple[str, ...]:
    """--gpu-memory is the override resources.gpu_memory_gb, so it travels to the container with the others."""
    return (*overrides, f"resources.gpu_memory_gb={gpu_memory}") if gpu_memory else tuple(overrides)
