"""What a cloud run will cost, said before it starts, and the budget that stops it.

hours = the dataset check's estimated training time (launcher/media: seconds per step by model size and
tokens, an ESTIMATE, see launcher/media/buckets.py) + a fixed allowance for start-up (image pull, model
load, caching). cost = hours x the platform's price for the GPU x the number of GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.core.errors import UserError

# Pulling the image, loading a 14B model and caching latents/text take minutes, not seconds; this allowance
# keeps short runs from being quoted at nearly nothing.
STARTUP_HOURS = 0.25


@dataclass(frozen=True)
class Quote:
    """A backend's price for one run: which GPU, its price, how many containers/pods run at once."""

    gpu: str
    usd_per_hour: float  # per GPU
    gpus: int = 1
    source: str = ""  # where the price comes from (the API's catalog, or a documented table)
    # How many of the run's trainings run at the same time: `--expert both` on Modal and RunPod trains its two
    # experts at once, each in its own container or pod (counted in `gpus`), so the wall clock is one training's.
    parallel: int = 1


@dataclass(frozen=True)
class Estimate:
    hours: float
    quote: Quote

    @property
    def usd(self) -> float:
        return self.hours * self.quote.usd_per_hour * self.quote.gpus

    @property
    def gpu_hours(self) -> float:
        return self.hours * self.quote.gpus

    def line(self, basis: str = "time is an estimate, +-50%") -> str:
        q = self.quote
        gpus = f"{q.gpus} x " if q.gpus > 1 else ""
        return (f"estimate: ~{self.hours:.1f} h on {gpus}{q.gpu} at ${q.usd_per_hour:.2f}/h = ${self.usd:.2f} "
                f"({self.gpu_hours:.1f} GPU-hours; {basis}; price: {q.source or 'see README'})")


def estimate(training_seconds: float, quote: Quote) -> Estimate:
    """`training_seconds`: all the run's trainings one after another; `quote.parallel` of them run at once."""
    return Estimate(training_seconds / quote.parallel / 3600 + STARTUP_HOURS, quote)


def check_budget(est: Estimate, max_cost: float | None) -> None:
    if max_cost is not None and est.usd > max_cost:
        raise UserError(f"the run is estimated at ${est.usd:.2f}, over --max-cost {max_cost:g}: raise --max-cost, "
                        "train fewer epochs (--set train.max_train_epochs=...) or pick a cheaper --gpu")


def hour_limit(max_hours: float | None, preset_hours: float, max_cost: float | None, quote: Quote) -> float:
    """The wall-clock limit the run enforces on itself: the smallest of --max-hours (default: the preset's
    time limit) and what --max-cost buys at this price."""
    limits = [max_hours or preset_hours]
    if max_cost is not None:
        limits.append(max_cost / (quote.usd_per_hour * quote.gpus))
    return min(limits)
