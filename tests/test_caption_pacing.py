"""The pace of `launcher caption` (launcher/caption/pacing.py), on a fake clock: nothing here sleeps.

How fast a real run gets near an unknown limit is measured by benchmarks/caption_throughput.py (test 5);
these tests pin the controller's rules, and a simulation (workers, latency and the fake's limit, a token bucket
or a rolling window, in simulated time) checks that together they settle near a limit.
"""

from __future__ import annotations

import heapq
import itertools

import pytest
from fakes.fake_gemini import RequestLimit, RollingLimit
from google.genai import errors as genai_errors

from launcher.caption import core, gemini, pacing, replicate_provider


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def adaptive(ceiling: float = 100_000, **kwargs) -> tuple[pacing.AdaptiveRate, Clock]:
    clock = Clock()
    return pacing.AdaptiveRate(ceiling, clock=clock, **kwargs), clock


def test_fixed_pace_spaces_starts_evenly_and_books_nothing_ahead():
    clock = Clock()
    limiter = pacing.RateLimiter(rpm=60, clock=clock)
    assert limiter.reserve() == 0.0
    assert [limiter.reserve(), limiter.reserve()] == [1.0, 1.0]  # asking again claims nothing
    clock.sleep(1.05)  # woken a little late: the next slot keeps the schedule
    assert limiter.reserve() == 0.0 and limiter.reserve() == pytest.approx(0.95)
    clock.sleep(5.0)  # idle: no catching up, two starts never come closer than 90% of a slot
    assert limiter.reserve() == 0.0 and limiter.reserve() == 1.0


def test_starts_at_a_rate_any_key_allows_and_never_above_the_ceiling():
    assert adaptive()[0].rate == pacing.START_RPM == 10
    assert adaptive(ceiling=4)[0].rate == 4


def test_slow_start_doubles_while_answers_come_back_clean_up_to_the_ceiling():
    pace, clock = adaptive(ceiling=50)
    half = pacing.DOUBLING * 60 / 2
    for _ in range(2):  # two answers in DOUBLING of a minute, counted from the first request's start
        clock.sleep(half)
        pace.answered(sent_at=clock.now - half, paced=True)
    assert pace.rate == pytest.approx(20)
    clock.sleep(60)  # a late answer at a low rate is no licence to leap
    pace.answered(sent_at=clock.now - 0.5, paced=True)
    assert pace.rate == pytest.approx(20 * pacing.MAX_STEP)
    for _ in range(5):
        clock.sleep(2 * half)
        pace.answered(sent_at=clock.now - 0.5, paced=True)
    assert pace.rate == 50


def test_only_requests_that_waited_for_their_slot_raise_the_rate():
    pace, clock = adaptive()
    for _ in range(10):
        clock.sleep(1.5)
        pace.answered(sent_at=clock.now - 0.5, paced=False)  # held back by concurrency, not by the pace
    assert pace.rate == 10


def test_a_429_cuts_the_rate_once_per_round_trip_and_its_retry_after_pauses_every_worker():
    pace, clock = adaptive()
    pace.rate = 200.0
    sent = clock.now
    clock.sleep(0.5)
    pace.throttled(sent_at=sent, after=4.0)
    assert pace.rate == pytest.approx(200 * pacing.CUT) and pace.peak == 200
    assert pace.reserve() == pytest.approx(4.0)  # nobody starts before Retry-After
    pace.throttled(sent_at=sent, after=None)  # sent before the cut: it says nothing about the new rate
    assert pace.rate == pytest.approx(170) and pace.throttled_count == 2
    clock.sleep(4.0)
    assert pace.reserve() == 0.0
    pace.throttled(sent_at=clock.now, after=None)  # sent after the cut, and refused: too fast still
    assert pace.rate == pytest.approx(170 * pacing.CUT) and pace.peak == pytest.approx(170)


def test_after_a_429_it_climbs_back_near_the_refused_rate_then_only_creeps():
    pace, clock = adaptive()
    pace.rate = 100.0
    pace.throttled(sent_at=clock.now, after=None)
    for _ in range(15):  # RECOVER: a quarter of a minute
        clock.sleep(1.0)
        pace.answered(sent_at=clock.now - 0.5, paced=True)
    assert pace.rate == pytest.approx(pacing.NEAR * 100, rel=1e-3)
    near = pace.rate
    for _ in range(60):
        clock.sleep(1.0)
        pace.answered(sent_at=clock.now - 0.5, paced=True)
    assert pace.rate == pytest.approx(near * (1 + pacing.PROBE), rel=1e-4)  # 1% a minute: 429s stay rare


def test_answers_after_a_cut_that_come_slower_than_sent_show_the_servers_own_pace():
    pace, clock = adaptive()
    pace.rate = 400.0
    pace.throttled(sent_at=clock.now, after=None)  # first 429: no answers yet to tell more, one cut
    assert pace.peak == 400 and pace.rate == pytest.approx(340)
    for _ in range(pacing.RECENT):  # the server lets one through every 0.5 s: 120 a minute
        clock.sleep(0.5)
        pace.answered(sent_at=clock.now - 0.5, paced=True)
    pace.throttled(sent_at=clock.now - 4.0, after=None)  # sent before the cut: old news, but a measurement
    assert pace.peak == pytest.approx(120) and pace.rate == pytest.approx(pacing.NEAR * 120)


def test_429s_for_requests_sent_just_after_a_cut_meet_the_old_pace_and_do_not_cut_again():
    pace, clock = adaptive()
    pace.rate = 100.0
    pace.throttled(sent_at=clock.now, after=None)
    clock.sleep(0.5)
    pace.throttled(sent_at=clock.now - 0.1, after=None)  # within HOLD (a second) of the cut
    assert pace.rate == pytest.approx(85)
    clock.sleep(1.5)
    pace.throttled(sent_at=clock.now - 0.1, after=None)
    assert pace.rate == pytest.approx(85 * pacing.CUT)


def test_no_429_puts_the_estimate_below_what_the_server_let_through_in_the_last_minute():
    pace, clock = adaptive()
    pace.rate = 120.0
    for _ in range(130):  # a minute and more of answers, two a second
        clock.sleep(0.5)
        pace.answered(sent_at=clock.now - 0.5, paced=False)
    pace.throttled(sent_at=clock.now, after=None)
    assert pace.peak == 120 and pace.rate == pytest.approx(102)
    for _ in range(4):
        clock.sleep(0.5)
        pace.answered(sent_at=clock.now - 0.5, paced=False)
    # A rolling-window server refuses while its minute still holds the old pace: the floor keeps the rate.
    pace.throttled(sent_at=clock.now, after=None)
    assert pace.peak == 120 and pace.rate == pytest.approx(102)


def clean_minute(pace, clock, count: int, spacing: float) -> list[float]:
    """`count` requests, one every `spacing` s, each answered cleanly half a second later: their starts."""
    starts = []
    for _ in range(count):
        assert pace.reserve() == 0.0
        starts.append(clock.now)
        clock.sleep(0.5)
        pace.answered(sent_at=starts[-1], paced=False)
        clock.sleep(spacing - 0.5)
    return starts


def test_a_long_retry_after_shows_a_rolling_window_and_the_pace_keeps_its_count():
    pace, clock = adaptive()
    pace.rate = 600.0
    starts = clean_minute(pace, clock, count=20, spacing=1.0)  # 20 let through in the last 20 s
    assert pace.reserve() == 0.0
    sent = clock.now
    clock.sleep(0.5)
    # Refused, to be retried when the first start is a minute old: 40 s, far longer than a bucket's slot at 20
    # a minute (3 s). Only a window that holds all 20 answers so.
    pace.throttled(sent_at=sent, after=starts[0] + 60 - clock.now)
    assert pace.window == 20 and pace.rate == 20 and pace.peak == 20
    horizon = 60 * (1 + pacing.SLACK)
    clock.now = starts[0] + 60.1  # Retry-After is over, but the start it was waiting for is not yet out
    assert pace.reserve() == pytest.approx(starts[0] + horizon - clock.now)
    clock.now = starts[0] + horizon
    assert pace.reserve() == 0.0  # the refused request was taken off the count: one slot, not two
    assert pace.reserve() == pytest.approx(3.0)  # the next start that frees comes a second later, but the
    clock.sleep(3.0)  # bunch the window frees is spread at its own rate, 20 a minute
    assert pace.reserve() == 0.0


def test_a_retry_after_of_a_slot_or_less_is_a_bucket_and_only_cuts():
    pace, clock = adaptive()
    pace.rate = 600.0
    clean_minute(pace, clock, count=20, spacing=1.0)
    pace.throttled(sent_at=clock.now, after=2.9)  # 20 a minute: a bucket's slot is 3 s
    assert pace.window is None and pace.rate < 600


def test_no_retry_after_never_shows_a_window():
    pace, clock = adaptive()
    pace.rate = 600.0
    clean_minute(pace, clock, count=20, spacing=1.0)
    pace.throttled(sent_at=clock.now, after=None)
    assert pace.window is None


def test_throttled_retries_reach_the_pace_and_other_failures_do_not():
    clock = Clock()
    pace = pacing.AdaptiveRate(1000, clock=clock)
    caller = core.Caller(core.RetryPolicy(random=lambda: 0.0), pace, sleep=clock.sleep)
    outcomes = iter([core.Retry("429", after=2.0, throttled=True), core.Retry("500"), "ok"])

    def request():
        outcome = next(outcomes)
        if isinstance(outcome, core.Retry):
            raise RuntimeError(outcome)
        return outcome

    assert caller(request, lambda exc: exc.args[0], limited=True) == "ok"
    assert pace.throttled_count == 1 and pace.rate == pytest.approx(10 * pacing.CUT)
    assert clock.now >= 1000 + 2.0  # the Retry-After was waited


def test_429s_on_a_paced_request_have_their_own_budget():
    clock = Clock()
    caller = core.Caller(core.RetryPolicy(), pacing.AdaptiveRate(1000, clock=clock), sleep=clock.sleep)
    throttled = core.Retry("429", after=1.0, throttled=True)

    def refused(times):
        outcomes = iter([throttled] * times + ["ok"])

        def request():
            outcome = next(outcomes)
            if isinstance(outcome, core.Retry):
                raise RuntimeError(outcome)
            return outcome
        return request

    assert caller(refused(12), lambda exc: exc.args[0], limited=True) == "ok"  # twice the 6 attempts for errors
    with pytest.raises(core.CaptionError, match="gave up after 30 attempts: 429"):
        caller(refused(30), lambda exc: exc.args[0], limited=True)
    with pytest.raises(core.CaptionError, match="gave up after 6 attempts: 429"):  # not paced: a plain error
        caller(refused(6), lambda exc: exc.args[0])


def test_providers_tell_a_429_from_other_transient_errors():
    assert gemini.classify(genai_errors.ClientError(429, {"error": {"code": 429}})).throttled
    assert not gemini.classify(genai_errors.ServerError(503, {"error": {"code": 503}})).throttled
    assert replicate_provider.classify(replicate_provider.TransientStatus(429, 3.0)) == core.Retry(
        "HTTP 429 from Replicate", 3.0, throttled=True)
    assert not replicate_provider.classify(replicate_provider.TransientStatus(500, None)).throttled


def simulate(limit: int, minutes: int, quota_kind=RequestLimit, workers: int = 32,
             latency: float = 0.5) -> tuple[list[float], int, int]:
    """A run in simulated time: `workers` workers, each request answered `latency` s after it is sent, by the
    fake's limit (`quota_kind`); a 429 is retried after its Retry-After. Returns (when the server let each
    request through, requests sent, requests refused)."""
    clock = Clock(0.0)
    pace, quota = pacing.AdaptiveRate(100_000, clock=clock), quota_kind(limit, clock=clock)
    events, order, left, accepted, sent = [], itertools.count(), [limit * minutes], [], [0]

    def at(when, action):
        heapq.heappush(events, (when, next(order), action))

    def start(paced=False):
        if left[0] == 0:
            return
        if (wait := pace.reserve()) > 0:
            return at(clock.now + wait, lambda: start(True))
        left[0], sent[0], sent_at, refused = left[0] - 1, sent[0] + 1, clock.now, quota.admit()
        if refused is None:
            accepted.append(sent_at)
        at(sent_at + latency, lambda: answer(sent_at, paced, refused))

    def answer(sent_at, paced, refused):
        if refused is None:
            pace.answered(sent_at, paced)
            return start()
        pace.throttled(sent_at, refused)
        left[0] += 1
        at(clock.now + refused * 1.05, start)  # Caller's backoff: the Retry-After, plus up to 10%

    for _ in range(workers):
        at(0.0, start)
    while events:
        clock.now, _, action = heapq.heappop(events)
        action()
    return accepted, sent[0], quota.refused


@pytest.mark.parametrize("limit", [10, 120, 2000])
@pytest.mark.parametrize("quota_kind", [RequestLimit, RollingLimit], ids=["bucket", "rolling"])
def test_settles_near_a_limit_it_is_not_told(limit, quota_kind):
    accepted, sent, refused = simulate(limit, minutes=6, quota_kind=quota_kind)
    assert len(accepted) == limit * 6  # every file let through exactly once
    if quota_kind is RequestLimit:  # the limit's pace reached within the first minute
        assert sum(30 <= t < 60 for t in accepted) * 2 >= 0.9 * limit
    else:  # a window's limit is a count: reached when the first minute holds it (see the benchmark)
        assert sum(t < 60 for t in accepted) >= 0.9 * limit
    assert (len(accepted) - 1) / (accepted[-1] - accepted[0]) * 60 >= 0.9 * limit  # over the whole run
    if quota_kind is RequestLimit:  # and near the limit, not above it, once the start is over
        after_minute_one = (len(accepted) - sum(t < 60 for t in accepted)) / (accepted[-1] - 60) * 60
        assert 0.95 * limit <= after_minute_one <= 1.01 * limit
    assert refused <= 0.05 * sent
