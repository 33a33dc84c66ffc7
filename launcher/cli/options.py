"""Options shared by several commands, defined once."""

from __future__ import annotations

import click

set_option = click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE",
    help="Override a preset value by its dotted key (repeatable), e.g. --set train.max_train_epochs=30.")


class Finite(click.ParamType):
    """A finite float in (low, high]: click's FloatRange lets `nan` and `inf` through (nan fails no comparison)."""

    name = "number"

    def __init__(self, low: float, high: float, unit: str):
        self.low, self.high, self.unit = low, high, unit

    def convert(self, value, param, ctx):
        import math

        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or not self.low < number <= self.high:
            self.fail(f"{value!r} is not a number of {self.unit} above {self.low:g} and at most {self.high:g}",
                      param, ctx)
        return number

    def get_metavar(self, param, ctx=None):
        return self.unit.upper()


gpu_memory_option = click.option(
    "--gpu-memory", "gpu_memory", type=click.IntRange(8, 1024), metavar="GB",
    help="GPU memory to fit, in GB (any size, e.g. 24, 32, 48) [default: the preset's resources.gpu_memory_gb]; "
         "the plan picks fp8, block swap and activation offload to fit.")


gpus_per_run_option = click.option(
    "--gpus-per-run", "gpus_per_run", type=click.IntRange(1, 8), metavar="N",
    help="GPUs for each training, data-parallel (accelerate --multi_gpu) [default: the preset's resources.gpus, 1]; "
         "each GPU holds the whole model and trains its share of every epoch's batches.")


def with_gpus_per_run(overrides, gpus: int | None) -> tuple[str, ...]:
    """--gpus-per-run is the override resources.gpus, so the container plans the same accelerate launch."""
    return (*overrides, f"resources.gpus={gpus}") if gpus else tuple(overrides)


def with_gpu_memory(overrides, gpu_memory: int | None) -> tuple[str, ...]:
    """--gpu-memory is the override resources.gpu_memory_gb, so it travels to the container with the others."""
    return (*overrides, f"resources.gpu_memory_gb={gpu_memory}") if gpu_memory else tuple(overrides)


# Which expert learns what: Wan 2.2 denoises with the high-noise expert first, then the low-noise one.
EXPERT_HELP = ("Wan 2.2 only: which expert to train. high: the high-noise expert (early steps: composition, motion, "
               "layout); low: the low-noise expert (late steps: detail, texture, identity/likeness); both: cache "
               "once, train both [default for Wan 2.2: both].")
