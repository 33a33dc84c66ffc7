"""The timeouts of a Modal run with an orchestrator (launcher/backends/modal_timeouts.py): cache pass and trainings
share the run's limit, and fit with their start-ups and queueing in the orchestrator's 24 h (Modal's maximum; a
function's timeout does not count its scheduling, the orchestrator's waiting does: modal.com/docs/guide/timeouts).
Modal is never reached (test_modal_backend's autouse _offline fixture)."""

from __future__ import annotations

import modal
import pytest
from test_modal_backend import _offline, job_and_options, spec_for  # noqa: F401  (autouse: no Modal client)

from launcher.backends import modal_app, modal_backend, modal_timeouts


@pytest.mark.parametrize("limits", [{}, {"max_hours": 5}, {"max_hours": 0.5}, {"max_cost": 30.0}])
def test_both_shares_the_runs_limit_between_cache_and_trainings(limits):
    """The orchestrator waits for the cache pass and then the trainings (plus their queueing and start-ups, which
    Modal's timeouts do not count): cache + training must fit in its 24 h, and in the run's own limit."""
    job, options = job_and_options(expert="both", **limits)
    limit = modal_backend.timeout_s(job, options)
    spec = modal_backend.modal_spec(job, options)
    stages = spec.cache_timeout_s + spec.timeout_s + spec.samples_timeout_s  # samples: the pair, after both
    assert stages <= limit
    waits = modal_timeouts.waves(True) * (spec.startup_timeout_s + modal_timeouts.QUEUE_ALLOWANCE_S)
    assert stages + waits <= spec.orchestrator_timeout_s <= modal_app.MAX_TIMEOUT_S
    assert spec.cache_timeout_s >= 60 and spec.timeout_s >= spec.cache_timeout_s == spec.samples_timeout_s
    job, options = job_and_options(**limits)  # without an orchestrator the one function has the whole limit
    single = modal_backend.modal_spec(job, options)
    assert (single.timeout_s, single.cache_timeout_s, single.orchestrator_timeout_s) == (
        modal_backend.timeout_s(job, options), None, None)


def test_max_cost_holds_for_cache_pass_and_trainings_together():
    job, options = job_and_options(expert="both", max_cost=20.0)
    spec, price = modal_backend.modal_spec(job, options), modal_backend.PRICES["H100"]
    # the cache pass on one GPU, then two experts on one GPU each, then the samples on one, each to its timeout
    assert (spec.cache_timeout_s + spec.timeout_s * 2 + spec.samples_timeout_s) * price <= 20.0 * 3600


def test_functions_are_registered_with_the_split_timeouts(monkeypatch):
    registered = {}
    original = modal.App.function

    def record(self, **kwargs):
        def register(fn):
            registered[fn.__name__] = kwargs
            return original(self, **kwargs)(fn)
        return register

    monkeypatch.setattr(modal.App, "function", record)
    spec = spec_for(expert="both")
    modal_app.build(spec)
    assert registered["cache"]["timeout"] == spec.cache_timeout_s
    assert registered["train_high"]["timeout"] == registered["train_low"]["timeout"] == spec.timeout_s
    assert registered["samples"]["timeout"] == spec.samples_timeout_s
    assert registered["train_high"]["startup_timeout"] == modal_timeouts.STARTUP_TIMEOUT_S
    assert registered["both"]["timeout"] == modal_app.MAX_TIMEOUT_S and "volumes" not in registered["both"]
    registered.clear()
    modal_app.build(spec_for(max_hours=5))
    assert registered["train"]["timeout"] == 5 * 3600 and registered["train"]["startup_timeout"] is None
