"""Properties of the limiter that must hold for any limits, arrivals, request sizes and 429 pauses.

Hypothesis draws the limits, when requests arrive, how many tokens each costs and when pauses hit. The limiter
runs on virtual time (nothing sleeps for real), and every bound below is derived from the bucket rules, not
read off the implementation, so a limiter that bursts, starves, reorders or leaves capacity unused fails.

Notation: a bucket refills at r units/s up to a capacity C = max(r x burst_seconds, 1) and starts EMPTY. A
request of `a` units is admitted once the level is >= min(a, C), and then takes all `a` (an oversize request
takes the bucket into debt). x+ means max(x, 0). Every derivation rests on four facts:

* (F1) the level never exceeds C;
* (F2) over any dt the level rises by at most r x dt (refill is capped at C, and pauses only lower the level);
* (F3) just before an admission the level is >= min(a, C);
* (F4) so just after it the level is >= min(a, C) - a = -(a - C)+.

The limiter counts a wait under 1e-9 s as zero, so an admission may come up to that much early: the bounds
grant SLACK seconds of extra refill for it, and `fits` allows float noise.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rate_limited_processor.core.limiter import InProcessLimiter, Limits, TokenBucket

#: Virtual time at which every limiter (and its empty buckets) is created.
START = 100.0
#: Seconds an admission may come early: ten times the limiter's "a wait this short counts as now".
SLACK = 1e-8
#: Window widths checked by the window bound, from far below one request's spacing to a whole minute.
WIDTHS = (0.0, 0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 10.0, 60.0)

#: Deterministic (derandomized, no example database) so CI and local runs see the same cases.
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def fits(value: float, bound: float) -> bool:
    """value <= bound, give or take float noise."""
    return value <= bound + 1e-9 * max(1.0, abs(bound))


# -- virtual clocks -----------------------------------------------------------------------------------


class FakeClock:
    """A clock that only moves when the limiter sleeps (or the test moves it): for one caller at a time."""

    def __init__(self, now: float, *, max_sleeps: int = 100_000) -> None:
        self.now = now
        self.sleeps = 0
        self.max_sleeps = max_sleeps

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0, f"the limiter slept for {seconds!r}: a wait it should have counted as now"
        self.sleeps += 1
        assert self.sleeps <= self.max_sleeps, "the limiter keeps sleeping: polling or a livelock"
        self.now += seconds
        await asyncio.sleep(0)


class SimClock:
    """Virtual time shared by many tasks: `sleep` parks the caller on a timer and `run` fires the timers in
    time order, each only once every task is blocked, so concurrent sleepers see one consistent clock."""

    def __init__(self, now: float, *, max_wakeups: int = 100_000) -> None:
        self.now = now
        self.max_wakeups = max_wakeups
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(seconds, 0.0), next(self._order), future))
        await future

    async def run(self, coroutines: Sequence[Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(coroutine) for coroutine in coroutines]
        wakeups = 0
        while True:
            # Let every task run until it blocks (on a timer, or on the limiter's lock behind one). asyncio has
            # no public "run until idle", so watch CPython's queue of callbacks that are due now.
            await asyncio.sleep(0)
            while loop._ready:  # type: ignore[attr-defined]
                await asyncio.sleep(0)
            for task in tasks:
                if task.done():
                    task.result()  # re-raise a task's failure here
            if all(task.done() for task in tasks):
                return
            assert self._timers, "every task is blocked and no timer is pending: somebody starves forever"
            when, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not future.done():  # a sleeper that was cancelled has nothing to wake
                future.set_result(None)
            wakeups += 1
            assert wakeups <= self.max_wakeups, "the limiter keeps waking up: polling or a livelock"


# -- the bucket shapes, derived from Limits as documented ----------------------------------------------


@dataclass(frozen=True)
class Shape:
    """Refill rates (per second) and capacities of the two buckets; None where unlimited."""

    req_rate: float | None
    req_cap: float | None
    tok_rate: float | None
    tok_cap: float | None

    @classmethod
    def of(cls, limits: Limits) -> Shape:
        def bucket(per_minute: float | None) -> tuple[float | None, float | None]:
            if per_minute is None:
                return None, None
            rate = per_minute / 60.0
            return rate, max(rate * limits.burst_seconds, 1.0)

        return cls(*bucket(limits.requests_per_minute), *bucket(limits.tokens_per_minute))

    @property
    def fill_time(self) -> float:
        """Seconds for the slower bucket to fill from empty (1 if there are no buckets)."""
        times = [cap / rate for rate, cap in ((self.req_rate, self.req_cap), (self.tok_rate, self.tok_cap)) if rate and cap]
        return max(times, default=1.0)

    def excess(self, size: float) -> float:
        """How far `size` exceeds the token bucket: the debt it leaves, (a - C)+."""
        return max(0.0, size - self.tok_cap) if self.tok_cap is not None else 0.0

    def step(self, previous_size: float, size: float) -> float:
        """Longest wait for `size` right after an admission of `previous_size` (0 for the very first request).

        By (F4) the request level is then >= 0 (it needs 1) and the token level >= -(previous - C)+ (it needs
        min(size, C)); both refill at their full rate while short of that need, since the need is <= C.
        """
        waits = [0.0]
        if self.req_rate is not None:
            waits.append(1.0 / self.req_rate)
        if self.tok_rate is not None and self.tok_cap is not None:
            waits.append((min(size, self.tok_cap) + self.excess(previous_size)) / self.tok_rate)
        return max(waits)


# -- the checks, each derived once ---------------------------------------------------------------------


def check_window_bound(times: Sequence[float], sizes: Sequence[int], shape: Shape) -> None:
    """However the requests arrive, any window [t, t + W] admits at most
        requests: r_req x W + C_req
        tokens:   r_tok x W + C_tok + (a_last - C_tok)+   <=   r_tok x W + C_tok + (max_size - C_tok)+

    Derivation (per bucket): let the window's admissions be at s_1 <= ... <= s_m, of sizes a_1 .. a_m. By (F1)
    the level just before s_1 is <= C. Between s_1 and s_m the refill is <= r x (s_m - s_1) <= r x W (F2), and
    a_1 .. a_{m-1} are taken, so the level just before s_m is <= C + r x W - (a_1 + ... + a_{m-1}). By (F3) it
    is also >= min(a_m, C). Hence a_1 + ... + a_m <= r x W + C + a_m - min(a_m, C) = r x W + C + (a_m - C)+.
    Every request counts 1 <= C_req, so the request bucket has no excess term. With sizes <= C_tok the token
    excess is 0; an oversize request may overshoot by its own excess (it goes through on a full bucket and
    the debt it leaves slows the next ones, after the window), which is never more than (max_size - C)+.

    Checked exactly for every pair of admissions (W = s_j - s_i, the tightest windows), then in the brief's
    form: every window starting at an admission, for fixed widths and the bucket's own fill time.
    """
    assert list(times) == sorted(times), "admissions went back in time"
    n = len(times)
    for i in range(n):
        tokens = 0
        for requests, j in enumerate(range(i, n), start=1):
            tokens += sizes[j]
            span = times[j] - times[i] + SLACK
            if shape.req_rate is not None and shape.req_cap is not None:
                assert fits(requests, shape.req_rate * span + shape.req_cap), (
                    f"{requests} requests admitted in {span:.9f} s from {times[i]:.9f}: more than the request bucket allows"
                )
            if shape.tok_rate is not None and shape.tok_cap is not None:
                assert fits(tokens, shape.tok_rate * span + shape.tok_cap + shape.excess(sizes[j])), (
                    f"{tokens} tokens admitted in {span:.9f} s from {times[i]:.9f}: more than the token bucket allows"
                )
    prefix = list(itertools.accumulate(sizes, initial=0))
    max_excess = max((shape.excess(size) for size in sizes), default=0.0)
    for width in (*WIDTHS, shape.fill_time / 2, shape.fill_time, 3 * shape.fill_time):
        for start in times:
            first, last = bisect.bisect_left(times, start), bisect.bisect_right(times, start + width)
            requests, tokens = last - first, prefix[last] - prefix[first]
            if shape.req_rate is not None and shape.req_cap is not None:
                assert fits(requests, shape.req_rate * (width + SLACK) + shape.req_cap), (width, start, requests)
            if shape.tok_rate is not None and shape.tok_cap is not None:
                assert fits(tokens, shape.tok_rate * (width + SLACK) + shape.tok_cap + max_excess), (width, start, tokens)


def check_paced_from_empty(times: Sequence[float], sizes: Sequence[float], shape: Shape, since: float) -> None:
    """Admissions made while both buckets count from EMPTY at `since` (creation, or the end of a pause) are never
    ahead of the rate: the m-th one, at s_m, has
        m <= r_req x (s_m - since)                       i.e. s_m >= since + m / r_req
        a_1 + ... + a_m - (a_m - C_tok)+ <= r_tok x (s_m - since)

    Derivation: the level at `since` is <= 0 and rises by at most r x (s_m - since) (F2); a_1 .. a_{m-1} are
    taken before s_m, and just before s_m the level is >= min(a_m, C) (F3). So
    min(a_m, C) <= r x (s_m - since) - (a_1 + ... + a_{m-1}). For the request bucket every a is 1 <= C.
    No admission at all before `since`, even with no limits.
    """
    tokens = 0.0
    for m, (at, size) in enumerate(zip(times, sizes, strict=True), start=1):
        tokens += size
        elapsed = at - since + SLACK
        assert elapsed >= 0, f"admission {m} at {at:.9f}, before {since:.9f}"
        if shape.req_rate is not None:
            assert fits(m, shape.req_rate * elapsed), f"admission {m} at {at - since:.9f} s after {since}: ahead of the request rate"
        if shape.tok_rate is not None:
            assert fits(tokens - shape.excess(size), shape.tok_rate * elapsed), (
                f"admission {m} at {at - since:.9f} s after {since}: {tokens} tokens is ahead of the token rate"
            )


def check_progress(
    called_at: Sequence[float],
    times: Sequence[float],
    sizes: Sequence[int],
    shape: Shape,
    pause_ends: Sequence[float] | None = None,
) -> None:
    """Served in order, nobody waits longer than the buckets force. With admissions in calling order,
        s_j <= max(c_j, s_{j-1} + step_j, P_j + step_j)
    where c_j is when request j called acquire, s_0 = START (buckets empty, like after a take of 0),
    step_j = max(1 / r_req, (min(a_j, C_tok) + (a_{j-1} - C_tok)+) / r_tok) (`Shape.step`) and P_j is the latest
    end of a pause issued before admission j (-inf without pauses).

    Derivation: right after admission j-1, request j is first in line. By (F4) the levels are then >= 0 and
    >= -(a_{j-1} - C)+, and while short of what request j needs (<= C) they refill at the full rate, so both
    suffice by s_{j-1} + step_j. A pause empties the buckets at its end P, but from levels that (F4) still
    bounds the same way (emptying only lowers a positive level to 0), so they suffice by P + step_j. The
    limiter sleeps exactly the computed waits, so request j goes at the later of its call and those times.
    Summed over a backlog (every c_j = START) this is elapsed <= step_1 + ... + step_n.
    """
    previous_time, previous_size = START, 0
    for j, (called, at, size) in enumerate(zip(called_at, times, sizes, strict=True)):
        step = shape.step(previous_size, size)
        pause_end = pause_ends[j] if pause_ends is not None else float("-inf")
        latest = max(called, previous_time + step, pause_end + step)
        assert at >= called - SLACK and at >= previous_time, f"request {j} admitted at {at:.9f} before its turn"
        assert fits(at, latest + SLACK), f"request {j} admitted at {at:.9f}, later than the buckets force ({latest:.9f})"
        previous_time, previous_size = at, size


# -- running the limiter -------------------------------------------------------------------------------


def run_one_at_a_time(limits: Limits, arrivals: Sequence[float], sizes: Sequence[int]) -> tuple[list[float], int]:
    """Requests in arrival order, each acquire starting at its arrival or once the previous one is admitted.

    Returns the admission times and how many times the limiter slept.
    """

    async def scenario() -> tuple[list[float], int]:
        clock = FakeClock(START, max_sleeps=10 * len(sizes) + 10)
        limiter = InProcessLimiter(limits, clock=clock, sleep=clock.sleep)
        admitted = []
        for arrival, size in zip(arrivals, sizes, strict=True):
            clock.now = max(clock.now, arrival)
            await limiter.acquire(size)
            admitted.append(clock.now)
        return admitted, clock.sleeps

    return asyncio.run(scenario())


@dataclass
class ConcurrentRun:
    """What happened when every request was its own task: in the order things happened."""

    #: Request indices in the order they called acquire, and when.
    calls: list[int] = field(default_factory=list)
    called_at: dict[int, float] = field(default_factory=dict)
    #: (request index, time, event number) in admission order.
    admissions: list[tuple[int, float, int]] = field(default_factory=list)
    #: (time issued, seconds, event number) in the order issued.
    pauses: list[tuple[float, float, int]] = field(default_factory=list)


def run_concurrently(
    limits: Limits, arrivals: Sequence[float], sizes: Sequence[int], pauses: Sequence[tuple[float, float]] = ()
) -> ConcurrentRun:
    """Every request its own task, calling acquire at its arrival; a further task issues `pauses` (at, seconds)."""
    clock = SimClock(START, max_wakeups=20 * (len(sizes) + len(pauses)) + 20)
    run = ConcurrentRun()
    events = itertools.count()

    async def scenario() -> None:
        limiter = InProcessLimiter(limits, clock=clock, sleep=clock.sleep)

        async def request(index: int) -> None:
            await clock.sleep(arrivals[index] - clock.now)
            run.calls.append(index)
            run.called_at[index] = clock.now
            await limiter.acquire(sizes[index])
            run.admissions.append((index, clock.now, next(events)))

        async def pauser() -> None:
            for at, seconds in sorted(pauses):
                await clock.sleep(at - clock.now)
                await limiter.pause(seconds)
                run.pauses.append((clock.now, seconds, next(events)))

        await clock.run([request(index) for index in range(len(sizes))] + [pauser()])

    asyncio.run(scenario())
    return run


# -- what hypothesis draws -----------------------------------------------------------------------------


@st.composite
def limits_st(draw: st.DrawFn, *, allow_unlimited: bool = False) -> Limits:
    """Per-minute limits from far below one request a second (6 RPM) to 1,000/s, burst windows around 1 s."""
    rpm = draw(st.one_of(st.none(), st.sampled_from([6, 60, 500, 3_500, 60_000]), st.integers(6, 60_000)))
    tpm = draw(st.one_of(st.none(), st.sampled_from([600, 40_000, 200_000, 2_000_000]), st.integers(60, 6_000_000)))
    if not allow_unlimited and rpm is None and tpm is None:
        rpm = 600
    burst = draw(st.sampled_from([1.0, 0.05, 0.5, 2.0]))
    return Limits(requests_per_minute=rpm, tokens_per_minute=tpm, burst_seconds=burst)


def sizes_st(shape: Shape, *, min_size: int = 1, max_size: int = 40, oversize: bool = True) -> st.SearchStrategy[list[int]]:
    """Request sizes in tokens, relative to the token bucket: small, exactly full, and (if allowed) oversize."""
    if shape.tok_cap is None:
        return st.lists(st.integers(0, 10_000), min_size=min_size, max_size=max_size)
    cap = shape.tok_cap
    if not oversize:  # rounded down, so never above the capacity
        within = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)).map(lambda f: int(f * cap))
        return st.lists(within, min_size=min_size, max_size=max_size)
    fractions = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0), st.floats(1.0, 4.0))
    return st.lists(fractions.map(lambda f: round(f * cap)), min_size=min_size, max_size=max_size)


def arrivals_st(shape: Shape, count: int) -> st.SearchStrategy[list[float]]:
    """Arrival times from START, as non-negative gaps: none (bursts), short, and long enough to refill."""
    unit = shape.fill_time
    gap = st.one_of(st.just(0.0), st.floats(0.0, 0.3 * unit), st.floats(0.0, 3.0 * unit))
    return st.lists(gap, min_size=count, max_size=count).map(lambda gaps: list(itertools.accumulate(gaps, initial=START))[1:])


@st.composite
def traffic_st(draw: st.DrawFn, *, oversize: bool = True, max_requests: int = 40, allow_unlimited: bool = False) -> tuple[Limits, list[float], list[int]]:
    limits = draw(limits_st(allow_unlimited=allow_unlimited))
    shape = Shape.of(limits)
    sizes = draw(sizes_st(shape, max_size=max_requests, oversize=oversize))
    arrivals = draw(arrivals_st(shape, len(sizes)))
    return limits, arrivals, sizes


# -- 1. window bound -----------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(traffic=traffic_st(oversize=False))
def test_no_window_admits_more_than_rate_times_width_plus_capacity(traffic: tuple[Limits, list[float], list[int]]) -> None:
    """Sizes within the token bucket: requests <= r_req W + C_req and tokens <= r_tok W + C_tok (see check)."""
    limits, arrivals, sizes = traffic
    shape = Shape.of(limits)
    assert all(size <= (shape.tok_cap or size) for size in sizes)
    times, sleeps = run_one_at_a_time(limits, arrivals, sizes)
    check_window_bound(times, sizes, shape)
    check_paced_from_empty(times, sizes, shape, since=START)
    check_progress(arrivals, times, sizes, shape)
    # Waiting is computed, not polled: one sleep per request, a second at most for float rounding.
    assert sleeps <= 2 * len(sizes)


@PROPERTY_SETTINGS
@given(traffic=traffic_st(oversize=True))
def test_oversize_requests_overshoot_a_window_by_at_most_their_excess(traffic: tuple[Limits, list[float], list[int]]) -> None:
    """With oversize requests: tokens <= r_tok W + C_tok + (max_size - C_tok)+ (see check_window_bound)."""
    limits, arrivals, sizes = traffic
    shape = Shape.of(limits)
    times, sleeps = run_one_at_a_time(limits, arrivals, sizes)
    check_window_bound(times, sizes, shape)
    check_paced_from_empty(times, sizes, shape, since=START)
    check_progress(arrivals, times, sizes, shape)
    assert sleeps <= 2 * len(sizes)


# -- 2. nothing starves, first come first served -------------------------------------------------------


@PROPERTY_SETTINGS
@given(traffic=traffic_st(max_requests=25))
def test_concurrent_callers_all_get_through_in_calling_order_without_needless_waiting(
    traffic: tuple[Limits, list[float], list[int]],
) -> None:
    """Every request is its own task. All complete (SimClock fails if anyone is blocked with no timer left),
    in the order they called acquire, each no later than check_progress's bound; the window bound holds too."""
    limits, arrivals, sizes = traffic
    shape = Shape.of(limits)
    run = run_concurrently(limits, arrivals, sizes)
    order = [index for index, _, _ in run.admissions]
    assert sorted(order) == list(range(len(sizes))), "not every request was admitted exactly once"
    assert order == run.calls, "not served in the order they called acquire"
    times = [at for _, at, _ in run.admissions]
    admitted_sizes = [sizes[index] for index in order]
    check_progress([run.called_at[index] for index in order], times, admitted_sizes, shape)
    check_window_bound(times, admitted_sizes, shape)
    check_paced_from_empty(times, admitted_sizes, shape, since=START)


@PROPERTY_SETTINGS
@given(limits=limits_st(), data=st.data())
def test_a_backlog_of_concurrent_callers_finishes_within_the_summed_steps(limits: Limits, data: st.DataObject) -> None:
    """All n callers at once (the test_limiter pattern: only the lock holder sleeps, so a plain FakeClock will
    do): FIFO, and elapsed <= step_1 + ... + step_n, the backlog form of check_progress.

    Not max(n / r_req, sum / r_tok) + one request's refill: a token bucket that sits full while the request
    bucket binds stops refilling, and that lost refill is not made up later (see the worked example below)."""
    shape = Shape.of(limits)
    sizes = data.draw(sizes_st(shape, max_size=25))
    order: list[int] = []

    async def scenario() -> float:
        clock = FakeClock(START, max_sleeps=10 * len(sizes) + 10)
        limiter = InProcessLimiter(limits, clock=clock, sleep=clock.sleep)

        async def caller(index: int) -> None:
            await limiter.acquire(sizes[index])
            order.append(index)

        await asyncio.gather(*(caller(index) for index in range(len(sizes))))
        return clock.now - START

    elapsed = asyncio.run(scenario())
    assert order == list(range(len(sizes)))
    steps = sum(shape.step(previous, size) for previous, size in zip([0, *sizes], sizes, strict=False))
    assert fits(elapsed, steps + SLACK), (elapsed, steps)


# -- 3. the long-run rate is exact ---------------------------------------------------------------------


def ideal_backlog_time(sizes: Sequence[int], shape: Shape) -> float:
    """The least time n queued requests can take from empty buckets: check_paced_from_empty at m = n."""
    times = [0.0]
    if shape.req_rate is not None:
        times.append(len(sizes) / shape.req_rate)
    if shape.tok_rate is not None:
        times.append((sum(sizes) - shape.excess(sizes[-1])) / shape.tok_rate)
    return max(times)


@PROPERTY_SETTINGS
@given(limits=limits_st(), data=st.data())
def test_a_backlog_runs_at_exactly_the_limit_never_faster_never_slower(limits: Limits, data: st.DataObject) -> None:
    """Everything queued at START: never ahead of the rate (check_paced_from_empty; buckets start EMPTY so
    there is no initial burst), and no slower than check_progress allows. Where one bucket binds throughout,
    those two bounds meet, so the time is exact:
      * one limit only: elapsed == n / r_req, or == (sum - (a_n - C_tok)+) / r_tok (telescoping the steps:
        each request waits min(a_j, C) plus the previous one's debt, and the last one's debt is paid later);
      * one size a for all: ideal <= elapsed <= ideal + step_1, where ideal = max(n / r_req,
        ((n - 1) a + min(a, C_tok)) / r_tok): the steps are step_1 + (n - 1) max(1 / r_req, a / r_tok) and the
        ideal is at least (n - 1) max(1 / r_req, a / r_tok). The one step of slack comes from the first
        request: while one bucket fills for it, the other may already be full and stop refilling.
    With one limit the two per-request bounds coincide, so every admission time (not only the last) is exact.
    """
    shape = Shape.of(limits)
    sizes = data.draw(st.one_of(sizes_st(shape), sizes_st(shape).map(lambda s: [s[0]] * len(s))))
    times, sleeps = run_one_at_a_time(limits, [START] * len(sizes), sizes)
    elapsed = times[-1] - START
    ideal = ideal_backlog_time(sizes, shape)
    check_paced_from_empty(times, sizes, shape, since=START)
    check_progress([START] * len(sizes), times, sizes, shape)
    assert fits(ideal, elapsed + SLACK), f"{len(sizes)} requests in {elapsed} s, under the ideal {ideal} s"
    if shape.req_rate is None or shape.tok_rate is None:
        assert elapsed == pytest.approx(ideal, rel=1e-9, abs=SLACK), "one bucket binds: the time should be exact"
    if len(set(sizes)) == 1:
        first_step = shape.step(0, sizes[0])
        assert fits(elapsed, ideal + first_step + SLACK), f"{elapsed} s is more than one step over the ideal {ideal} s"
    assert sleeps <= 2 * len(sizes)


def test_a_full_token_bucket_does_not_bank_refill_for_later_requests() -> None:
    """Why the backlog bound is the sum of steps and not max(n / r_req, sum / r_tok) + a step: 100 one-token
    requests bind on requests (10/s) for 10 s while the token bucket (100/s, capacity 100) sits full; the ten
    100-token requests after them still go one a second. 19.1 s, against max(11, 11) + 1 + 0.1 = 12.1 s."""
    limits = Limits(requests_per_minute=600, tokens_per_minute=6_000)
    sizes = [1] * 100 + [100] * 10
    times, _ = run_one_at_a_time(limits, [START] * len(sizes), sizes)
    assert times[99] - START == pytest.approx(10.0)
    assert times[100] - START == pytest.approx(10.1)  # the token bucket is full: the request bucket binds
    assert times[-1] - START == pytest.approx(19.1)
    shape = Shape.of(limits)
    summed_steps = sum(shape.step(previous, size) for previous, size in zip([0, *sizes], sizes, strict=False))
    assert summed_steps == pytest.approx(20.0)  # 100 x 0.1 s + 10 x 1 s: the bound holds, with 0.9 s to spare


# -- 4. pauses -----------------------------------------------------------------------------------------


@st.composite
def paused_traffic_st(draw: st.DrawFn) -> tuple[Limits, list[float], list[int], list[tuple[float, float]]]:
    limits, arrivals, sizes = draw(traffic_st(max_requests=20, allow_unlimited=True))
    shape = Shape.of(limits)
    busy = max(arrivals[-1] - START, sum(shape.step(p, s) for p, s in zip([0, *sizes], sizes, strict=False)), shape.fill_time)
    pause = st.tuples(
        st.one_of(st.just(0.0), st.floats(0.0, 1.2)).map(lambda f: START + f * busy),
        st.one_of(st.just(0.0), st.floats(0.0, 2.0)).map(lambda f: f * shape.fill_time),
    )
    return limits, arrivals, sizes, draw(st.lists(pause, min_size=1, max_size=3))


@PROPERTY_SETTINGS
@given(traffic=paused_traffic_st())
def test_after_a_pause_nothing_goes_until_it_ends_and_then_sends_are_paced_from_empty(
    traffic: tuple[Limits, list[float], list[int], list[tuple[float, float]]],
) -> None:
    """Pauses issued at any time, also while callers are mid-wait. For each `pause(p)` issued at t0, every
    admission after it (in the order things happened) is at or after t0 + p, and those admissions are paced as
    if both buckets were EMPTY at t0 + p (check_paced_from_empty): in [t0 + p, t0 + p + W] at most r_req x W
    requests, so the first one no earlier than t0 + p + 1 / r_req. No burst on resuming, not even the
    r_req x W + 1 the ordinary window bound would allow. The window bound, FIFO and check_progress (with
    P_j) still hold, so a pause delays nobody past its end plus one step."""
    limits, arrivals, sizes, pauses = traffic
    shape = Shape.of(limits)
    run = run_concurrently(limits, arrivals, sizes, pauses)
    order = [index for index, _, _ in run.admissions]
    assert order == run.calls and sorted(order) == list(range(len(sizes)))
    times = [at for _, at, _ in run.admissions]
    admitted_sizes = [sizes[index] for index in order]
    assert len(run.pauses) == len(pauses)
    for issued_at, seconds, pause_event in run.pauses:
        after = [(at, sizes[index]) for index, at, event in run.admissions if event > pause_event]
        check_paced_from_empty([at for at, _ in after], [size for _, size in after], shape, since=issued_at + seconds)
    pause_ends = [
        max((at + seconds for at, seconds, pause_event in run.pauses if pause_event < event), default=float("-inf"))
        for _, _, event in run.admissions
    ]
    check_progress([run.called_at[index] for index in order], times, admitted_sizes, shape, pause_ends)
    check_window_bound(times, admitted_sizes, shape)
    check_paced_from_empty(times, admitted_sizes, shape, since=START)


# -- 5. the bucket arithmetic on its own ---------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    rate=st.one_of(st.sampled_from([0.1, 1.0, 10.0, 1_000.0]), st.floats(0.01, 100_000.0)),
    burst_seconds=st.floats(0.01, 5.0),
    start_level=st.floats(-2.0, 1.0),
    operations=st.lists(
        st.tuples(
            st.sampled_from(["take", "take", "take", "pause"]),
            st.one_of(st.just(0.0), st.floats(0.0, 2.0)),  # advance, in bucket-fill times
            st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 3.0)),  # amount (or pause length), in capacities
            st.floats(0.0, 1.0),  # where to probe the wait, as a fraction of it
        ),
        max_size=60,
    ),
)
def test_token_bucket_levels_and_waits_are_consistent(
    rate: float, burst_seconds: float, start_level: float, operations: list[tuple[str, float, float, float]]
) -> None:
    """Advance, ask the wait for an amount, wait exactly that long, take it. Throughout:
      * the level never exceeds the capacity (F1) and after a take is >= -(amount - C)+ (F4);
      * the wait is never negative, shrinks one-for-one with time (probed part-way), and is ~0 once waited;
      * the takes obey the window bound: a_i + ... + a_j <= r (s_j - s_i) + C + (a_j - C)+;
      * after empty_at(when), takes are paced from empty at `when` (check_paced_from_empty's argument).
    """
    capacity = max(rate * burst_seconds, 1.0)
    fill = capacity / rate
    shape = Shape(req_rate=None, req_cap=None, tok_rate=rate, tok_cap=capacity)
    now = 0.0
    bucket = TokenBucket(rate, capacity, now=now, level=start_level * capacity)
    takes: list[tuple[float, float]] = []
    pauses: list[tuple[float, int]] = []  # (end, number of takes before it)
    for kind, advance, amount_in_capacities, probe in operations:
        now += advance * fill
        amount = amount_in_capacities * capacity
        if kind == "pause":
            bucket.empty_at(now + amount * fill, now)
            pauses.append((now + amount * fill, len(takes)))
            assert bucket.level <= 0.0
            continue
        wait = bucket.wait_time(amount, now)
        assert 0.0 <= wait < float("inf")
        assert bucket.level <= capacity
        if wait > 0.0:
            part = probe * wait
            assert bucket.wait_time(amount, now + part) == pytest.approx(wait - part, rel=1e-9, abs=1e-9)
            now += wait
            assert bucket.wait_time(amount, now) <= 1e-9, "waited exactly as long as told, and still not ready"
        bucket.take(amount, now)
        takes.append((now, amount))
        assert bucket.level <= capacity
        assert bucket.level >= -shape.excess(amount) - 1e-9 * capacity
    times = [at for at, _ in takes]
    amounts = [a for _, a in takes]
    for i in range(len(takes)):
        total = 0.0
        for j in range(i, len(takes)):
            total += amounts[j]
            assert fits(total, rate * (times[j] - times[i] + SLACK) + capacity + shape.excess(amounts[j]))
    for end, before in pauses:
        check_paced_from_empty(times[before:], amounts[before:], shape, since=end)
