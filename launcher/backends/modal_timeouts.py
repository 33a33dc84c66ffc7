"""How long each Modal function of a run may take, when an orchestrator (`both`, a sweep) waits for a cache pass
and then the trainings (and, for `both`, then the samples of the pair).

modal.com/docs/guide/timeouts: a Function's timeout measures its execution only, "not ... scheduling time", and
`startup_timeout` bounds the container's start-up (unset, the timeout bounds it too). The orchestrator's execution
is its waiting: it spans its stages' queueing, start-ups and executions, and Modal caps it at 24 h like any
function. So the run's limit is split, never stretched: cache pass + training fit in it, and with two waves of
start-up and queueing in the orchestrator's 24 h. No function is then ended by a timeout the dry run does not show.
`both` samples the two experts' LoRAs together after both trainings (modal_app.both), a third wave with a share of
its own, as large as the cache pass's: a single-container run's samples, too, come out of its one limit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.backends.modal_app import MAX_TIMEOUT_S

if TYPE_CHECKING:
    from launcher.backends.modal_backend import ModalSpec

STARTUP_TIMEOUT_S = 20 * 60  # a stage container's start-up (the image is built before the app runs)
QUEUE_ALLOWANCE_S = 10 * 60  # what a wave may wait for its GPUs: an allowance, Modal bounds queueing with nothing
WAVES = 2  # the cache pass(es), then the trainings (a third: `both`'s samples)
CACHE_SHARE = 4  # the cache pass gets a quarter of the run's time ...
CACHE_MAX_S = 3 * 3600  # ... at most 3 h (latents and text of a LoRA dataset: minutes on one GPU)


def waves(samples: bool) -> int:
    return WAVES + samples


def split_timeouts(limit_s: int, samples: bool = False) -> dict[str, int]:
    """The ModalSpec timeouts of a run whose orchestrator runs a cache pass, then the trainings (then, with
    `samples`, a samples stage): the run's limit (--max-hours, the preset's time_limit_hours or what --max-cost
    buys) shared by them, so that no stage outlives the orchestrator waiting for it and --max-cost holds for all
    of them together."""
    budget = min(limit_s, MAX_TIMEOUT_S - waves(samples) * (STARTUP_TIMEOUT_S + QUEUE_ALLOWANCE_S))
    cache = max(60, min(CACHE_MAX_S, budget // CACHE_SHARE))
    last = {"samples_timeout_s": cache} if samples else {}
    return {"cache_timeout_s": cache, "timeout_s": max(60, budget - cache * (1 + samples)), **last,
            "startup_timeout_s": STARTUP_TIMEOUT_S, "orchestrator_timeout_s": MAX_TIMEOUT_S}


def timeout_note(spec: ModalSpec) -> str:
    """The dry run's account of the timeouts."""
    if spec.orchestrator_timeout_s is None:
        return f"{_hours(spec.timeout_s)} for the run (Modal's timeout of its one function)"
    samples = spec.samples_timeout_s or 0
    return (f"cache pass {_hours(spec.cache_timeout_s)} + trainings {_hours(spec.timeout_s)}"
            + (f" + samples of the pair {_hours(samples)}" if samples else "") + " = "
            f"{_hours(spec.cache_timeout_s + spec.timeout_s + samples)}, within the run's limit (--max-hours, the "
            f"preset's time_limit_hours or --max-cost); the {spec.orchestrator} orchestrator waits at most "
            f"{_hours(spec.orchestrator_timeout_s)} (Modal's maximum), which leaves {waves(bool(samples))} x "
            f"({spec.startup_timeout_s // 60} min start-up + {QUEUE_ALLOWANCE_S // 60} min GPU queue)")


def _hours(seconds: int) -> str:
    return f"{seconds / 3600:.4g} h"
