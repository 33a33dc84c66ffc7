"""`launcher sweep --backend skypilot` is refused, in one line, before anything is planned or started.

A sweep runs its cache passes first and starts the trainings once they succeeded (launcher/sweep/__init__.py).
On SkyPilot that means holding this machine until the cache job ends, then reading each run's run.json from
the bucket for `status SWEEP`; neither is built here. What works instead: one `launcher run --backend skypilot
--set KEY=VALUE` per combination. Runs of one family share the bucket and its content-keyed caches, so a run
started after another's cache pass finished reuses it.
"""

from __future__ import annotations

from launcher.core.errors import UserError

REFUSAL = ("launcher sweep has no SkyPilot backend (its trainings must wait for the cache pass): start one "
           "`launcher run --backend skypilot --set KEY=VALUE` per combination, or sweep with --backend local, "
           "modal or runpod")


def refuse() -> None:
    raise UserError(REFUSAL)
