"""Cost estimates and the budget: refuse before starting, and the hour limit a run enforces on itself."""

from __future__ import annotations

import pytest

from launcher import cost
from launcher.core.errors import UserError

H100 = cost.Quote("H100 80GB", 4.0, source="test table")


def test_estimate_adds_startup_and_multiplies_gpus():
    est = cost.estimate(7200, cost.Quote("A100", 2.0, gpus=2))
    assert est.hours == pytest.approx(2.25) and est.usd == pytest.approx(9.0)
    assert est.line().startswith("estimate: ~2.2 h on 2 x A100 at $2.00/h = $9.00")


def test_budget_refuses_an_estimate_over_max_cost():
    est = cost.estimate(3600, H100)  # 1.25 h x $4 = $5
    cost.check_budget(est, 5.0)
    cost.check_budget(est, None)
    with pytest.raises(UserError, match=r"estimated at \$5.00, over --max-cost 4"):
        cost.check_budget(est, 4.0)


@pytest.mark.parametrize("max_hours, max_cost, expected", [(None, None, 24), (3, None, 3), (None, 10, 2.5),
                                                           (2, 10, 2)])
def test_hour_limit_is_the_tightest_of_time_and_money(max_hours, max_cost, expected):
    assert cost.hour_limit(max_hours, 24, max_cost, H100) == pytest.approx(expected)
