"""How fast to send model requests: a fixed pace (RateLimiter) or one learned from the server's 429s (AdaptiveRate).

Both hand out evenly spaced start slots shared by all workers (`reserve`), and hear how each request ended
(`answered`, `throttled`) from core.Caller. Neither sleeps: the caller waits, and the clock is a parameter,
so tests drive them with a fake one. How close to an unknown limit this gets, and how often it is refused, is
measured by benchmarks/caption_throughput.py (test 5).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable

# A key's limit is not told to the client. Gemini's free tier allows 10 to 15 requests a minute for the Flash
# models, tier 1 (billing on) 1,000 to 2,000, per project (ai.google.dev/gemini-api/docs/rate-limits); how the
# minute is counted is not published. Start where any key is safe.
START_RPM = 10.0
FLOOR_RPM = 1.0
DOUBLING = 1 / 40  # before the first 429 the rate doubles every 1.5 s (of a minute) of clean answers
MAX_STEP = 2.0  # ... but at most doubles per answer: a late answer at a low rate is no licence to leap
CUT = 0.85  # a 429 multiplies the rate by this ...
NEAR = 0.97  # ... then it climbs back, within RECOVER of a minute, to this share of the rate that was refused,
RECOVER = 1 / 4
PROBE = 0.01  # ... and above that creeps 1% a minute, to find a limit that was raised (and to keep 429s rare)
HOLD = 1 / 60  # requests sent within a second after a cut still meet the server's bucket as the old pace left it
RECENT = 8  # answers that tell the rate the server let through, when a 429 says the pace was too fast
# A server may count "N a minute" as a token bucket or as a rolling window (at most N in any minute); Google does
# not say which (ai.google.dev/gemini-api/docs/rate-limits). A bucket's Retry-After is at most one slot, 60/N s;
# a full window's is the time until its oldest request is a minute old, up to a minute. So a Retry-After longer
# than WINDOW_TELL slots at the rate the server just let through can only come from a window.
WINDOW_TELL = 2.0
SLACK = 1 / 50  # a start waits this much (of a minute) past the client's own count: the server counts on arrival


class RateLimiter:
    """At most `rpm` starts per minute, evenly spaced: a slot every 60/rpm s, shared by all workers."""

    def __init__(self, rpm: float, clock: Callable[[], float] = time.monotonic, minute: float = 60.0):
        self.rate, self.minute, self.clock = float(rpm), minute, clock
        self.throttled_count = 0
        self._last = -math.inf  # when the last slot was taken, on schedule
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """0 when the caller may start now (the slot is taken), else how long to wait before asking again.

        Nothing is booked ahead: the next slot is the last one plus a slot at the rate of now, so a rate that
        changed meanwhile applies at once to every waiting worker.
        """
        with self._lock:
            now = self.clock()
            wait = self._wait(now)
            if wait <= 0:
                # On schedule when a worker woke a little late, so that timer slack does not slow the pace; from
                # `now` after an idle spell, so that two starts never come closer than 90% of a slot.
                slot = self._last + self.minute / self.rate
                self._last = slot if now - slot < self.minute / self.rate / 10 else now
                self._started(now)
            return max(0.0, wait)

    def _wait(self, now: float) -> float:
        return self._last + self.minute / self.rate - now

    def _started(self, now: float) -> None:
        """A slot was taken at `now` (under the lock)."""

    def answered(self, sent_at: float, paced: bool) -> None:
        """A request sent at `sent_at` came back without a 429; `paced`: it had waited for its slot."""

    def throttled(self, sent_at: float, after: float | None) -> None:
        """A request sent at `sent_at` was answered 429, to be retried after `after` seconds if given."""
        with self._lock:
            self.throttled_count += 1


class AdaptiveRate(RateLimiter):
    """AIMD pacing below a ceiling (--rpm), as TCP paces a connection: slow start, then on a 429 a cut below the
    server's limit as estimated (`peak`), a quick climb back near it, and a slow probe above it.

    Growth is earned only by requests that waited for their slot, so a run held back by its concurrency does
    not inflate a rate it never uses. A 429 for a request sent before the last cut (or within HOLD after it)
    does not cut again, but the pace at which answers came since the cut, slower than sent, is the server's
    own: it becomes the estimate. No estimate goes below the clean answers of the last minute: the server let
    those through, whichever way it counts its minute. A Retry-After pauses every worker.

    A server that counts a rolling window tells itself apart by its Retry-After (WINDOW_TELL). Against a window
    a cut is no help: the window still holds the requests that filled it, and frees a slot only when one of
    them is a minute old, in the same bunches they came in (slow start sends them in a burst); a steady pace
    meets those bunches and is refused again, minute after minute. So the limiter keeps the server's count
    itself: once a window is seen, `window` is what the server let through in the minute before it refused, and
    a start waits until fewer than that many of its own unrefused starts lie in the last minute (SLACK more).
    """

    def __init__(self, ceiling: float, clock: Callable[[], float] = time.monotonic, minute: float = 60.0,
                 start: float | None = None):
        super().__init__(min(float(ceiling), START_RPM if start is None else start), clock, minute)
        self.ceiling = float(ceiling)
        self.peak: float | None = None  # the server's limit, as last estimated; None while in slow start
        self._paused_until = 0.0
        self._cut_at = -math.inf
        self._grown_at: float | None = None
        self._recent: deque[float] = deque(maxlen=RECENT)  # when the last clean answers came
        self._minute: deque[float] = deque()  # ... and all of those in the last minute
        self._began = clock()
        self.window: int | None = None  # the server's count for any minute, once it shows that it keeps one
        self._starts: deque[float] = deque()  # starts of the last minute, less those refused: the server's count
        self._clean_sent: deque[float] = deque()  # when each request answered cleanly was sent

    def _wait(self, now: float) -> float:
        wait = max(self._last + self.minute / self.rate, self._paused_until) - now
        horizon = self.minute * (1 + SLACK)
        while self._starts and self._starts[0] <= now - horizon:
            self._starts.popleft()
        if self.window is not None and len(self._starts) >= self.window:
            # Until enough of the oldest starts leave the window that this one fits in it.
            wait = max(wait, self._starts[len(self._starts) - self.window] + horizon - now)
        return wait

    def _started(self, now: float) -> None:
        self._starts.append(now)

    def answered(self, sent_at: float, paced: bool) -> None:
        with self._lock:
            now = self.clock()
            self._clean_sent.append(sent_at)
            while self._clean_sent and self._clean_sent[0] <= now - 2 * self.minute:
                self._clean_sent.popleft()
            since = now - (sent_at if self._grown_at is None else self._grown_at)
            self._grown_at = now
            self._recent.append(now)
            self._minute.append(now)
            self._last_minute(now)  # drops the older ones
            if paced:  # never above a window's count: it binds anyway, and the summary says the rate kept
                self.rate = min(self.ceiling, self.window or math.inf, self._grown(max(0.0, since)))

    def _grown(self, dt: float) -> float:
        if self.peak is None:
            return self.rate * min(MAX_STEP, 2 ** (dt / (DOUBLING * self.minute)))
        near = NEAR * self.peak
        if self.rate < near:  # additive: back to near the refused rate in RECOVER of a minute
            return min(near, self.rate + (1 - CUT) * self.peak * dt / (RECOVER * self.minute))
        return self.rate * (1 + PROBE * dt / self.minute)

    def throttled(self, sent_at: float, after: float | None) -> None:
        with self._lock:
            self.throttled_count += 1
            now = self.clock()
            self._forget(sent_at)
            if after:
                self._paused_until = max(self._paused_until, now + after)
            let = sum(sent_at - self.minute < t <= sent_at for t in self._clean_sent)
            if after is not None and after * let > WINDOW_TELL * self.minute:
                # A window, full: it let `let` through in the minute before it refused. Keep that count from now
                # on, and pace evenly at it, so that the bunches it frees are spread out and the burst dies away.
                self.window = self.peak = let
                self.rate = max(min(FLOOR_RPM, self.ceiling), min(self.rate, let))
                return
            if sent_at >= self._cut_at + HOLD * self.minute:  # news about the current pace: cut
                # Recent answers may span a ramp or a pause, and underrate the server: trust them down to the rate
                # before the last doubling in slow start (at most a round trip ago), else down to one cut.
                floor = self.rate * (0.5 if self.peak is None else CUT)
                # But what the server let through in the last minute it allows: a floor for any estimate.
                self.peak = max(self._last_minute(now), min(self.rate, max(self._let_through(), floor)))
                target = self.peak * CUT
            elif self.peak is not None and self._let_through(since=self._cut_at) < min(self.peak, self.rate):
                # Old news; but answers since the cut came slower than we sent: that is the server's own pace,
                # measured, not guessed. Go near it at once.
                self.peak = max(self._last_minute(now), self._let_through(since=self._cut_at))
                target = self.peak * NEAR
            else:
                return
            self._cut_at = now
            self.rate = max(min(FLOOR_RPM, self.ceiling), min(self.rate, target))

    def _last_minute(self, now: float) -> float:
        """Clean answers in the last minute; 0 until the pace is a minute old (a part-minute says too little)."""
        while self._minute and self._minute[0] <= now - self.minute:
            self._minute.popleft()
        return len(self._minute) if now - self._began >= self.minute else 0.0

    def _forget(self, sent_at: float) -> None:
        """A refused request did not count on the server: take the latest start at or before it off the count."""
        index = bisect.bisect_right(self._starts, sent_at) - 1
        if index >= 0:
            del self._starts[index]

    def _let_through(self, since: float | None = None) -> float:
        """Clean answers a minute, over the last RECENT of them: over as few as 2 when `since` is None, else
        RECENT that all came after `since` (infinite when there are not enough)."""
        enough = len(self._recent) == RECENT and self._recent[0] >= since if since is not None else len(
            self._recent) >= 2
        if not enough or self._recent[-1] <= self._recent[0]:
            return math.inf
        return (len(self._recent) - 1) * self.minute / (self._recent[-1] - self._recent[0])
