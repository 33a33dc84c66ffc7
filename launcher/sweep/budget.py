"""What a whole sweep will cost, said (and checked against --max-cost) before anything starts: each
training's own estimate (launcher/cost.py: its dataset check's time, which its grid values change, plus the
start-up allowance) at the backend's price, plus one start-up allowance per cache pass."""

from __future__ import annotations

from dataclasses import dataclass

from launcher import cost
from launcher.core.errors import UserError
from launcher.sweep.prepare import Sweep


@dataclass(frozen=True)
class SweepEstimate:
    runs: tuple[cost.Estimate, ...]
    caches: tuple[cost.Estimate, ...]

    @property
    def usd(self) -> float:
        return sum(e.usd for e in self.runs + self.caches)

    @property
    def gpu_hours(self) -> float:
        return sum(e.gpu_hours for e in self.runs + self.caches)

    def line(self, basis: str = "time is an estimate, +-50%") -> str:
        q = self.runs[0].quote
        return (f"estimate: {len(self.runs)} runs + {len(self.caches)} cache pass{'es' if len(self.caches) > 1 else ''}"
                f", ~{self.gpu_hours:.1f} GPU-hours on {q.gpu} at ${q.usd_per_hour:.2f}/h = ${self.usd:.2f} "
                f"({basis}; price: {q.source or 'see README'})")


def seconds_per_run(sweep: Sweep, dataset_dir: str) -> tuple[list[str], list[float]]:
    """The media check once in full (its errors stop the sweep, its warnings are returned), then each run's
    time from the headers only: the grid can change epochs, repeats or resolutions, so each run is timed."""
    from launcher.media import require
    from launcher.media.check import check_dataset

    require(hint=", or add --no-check to launch without the media check")
    first = sweep.trainings[0].job
    report = check_dataset(dataset_dir, first.loaded.preset, 1, layout=first.layout)
    if report.errors:
        raise UserError(*(p.message for p in report.errors))
    times = [report.seconds] + [check_dataset(dataset_dir, t.job.loaded.preset, 1, layout=t.job.layout,
                                              decode=False).seconds for t in sweep.trainings[1:]]
    return [p.message for p in report.warnings], times


def estimate(sweep: Sweep, quotes: list[cost.Quote], seconds: list[float], cache_quote: cost.Quote) -> SweepEstimate:
    runs = tuple(cost.estimate(s, q) for s, q in zip(seconds, quotes, strict=True))
    caches = tuple(cost.estimate(0, cache_quote) for _ in sweep.caches)
    return SweepEstimate(runs, caches)


def check_budget(est: SweepEstimate, max_cost: float | None) -> None:
    if max_cost is not None and est.usd > max_cost:
        # The estimate travels in the refusal: nothing is printed before it.
        raise UserError(f"the sweep is estimated at ${est.usd:.2f} for {len(est.runs)} runs, over --max-cost "
                        f"{max_cost:g} ({est.line()}): raise --max-cost, drop grid values, or train fewer epochs")
