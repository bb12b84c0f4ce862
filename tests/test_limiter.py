"""Bucket math and the in-process limiter, on a fake clock: no real sleeping anywhere."""

from __future__ import annotations

import asyncio

import pytest

from rate_limited_processor.core.limiter import InProcessLimiter, Limits, RateBuckets, RateLimiter, TokenBucket
from tests.virtual_time import run_virtual, virtual_time


class FakeClock:
    """A clock that only moves when the limiter sleeps (or the test advances it)."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# -- TokenBucket --------------------------------------------------------------------------------------


def test_bucket_starts_full_and_refills_continuously() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=0.0)
    assert bucket.wait_time(5, now=0.0) == 0.0
    bucket.take(5, now=0.0)
    assert bucket.wait_time(1, now=0.0) == pytest.approx(0.1)
    assert bucket.wait_time(1, now=0.05) == pytest.approx(0.05)
    assert bucket.wait_time(3, now=0.1) == pytest.approx(0.2)  # has 1 at t=0.1, needs 2 more at 10/s


def test_bucket_refill_is_capped_at_capacity() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=0.0, level=0.0)
    bucket.refill(now=1_000.0)
    assert bucket.level == 5.0


def test_oversize_amount_waits_for_a_full_bucket_then_goes_into_debt() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=0.0, level=2.0)
    assert bucket.wait_time(50, now=0.0) == pytest.approx(0.3)  # waits for full (5), not for 50
    bucket.take(50, now=0.3)
    assert bucket.level == pytest.approx(-45.0)
    # The debt is paid back at the bucket's rate before the next unit: the long-run rate holds.
    assert bucket.wait_time(1, now=0.3) == pytest.approx(4.6)


def test_emptied_bucket_refills_from_the_given_future_time() -> None:
    bucket = TokenBucket(rate=10.0, capacity=5.0, now=0.0)
    bucket.empty_at(2.0, now=1.0)
    assert bucket.wait_time(1, now=1.0) == pytest.approx(1.1)  # 1 s until the pause ends, then 0.1 s
    assert bucket.wait_time(1, now=2.05) == pytest.approx(0.05)


def test_a_pause_does_not_carry_an_old_debt_that_has_since_been_repaid() -> None:
    bucket = TokenBucket(rate=1_000.0, capacity=1_000.0, now=0.0)
    bucket.take(4_000, now=0.0)  # an oversize request: 3,000 in debt, repaid by t=3.0
    bucket.empty_at(4.9, now=3.9)  # a 429 at 3.9 s pauses everyone for 1 s
    assert bucket.wait_time(1_000, now=4.9) == pytest.approx(1.0)  # from empty at 4.9, not from the old debt


@pytest.mark.parametrize("rate, capacity", [(0, 1), (1, 0), (-1, 1)])
def test_bucket_rejects_non_positive_parameters(rate: float, capacity: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity, now=0.0)


# -- RateBuckets --------------------------------------------------------------------------------------


def test_capacity_is_one_second_of_the_limit_not_a_minute_and_clients_start_empty() -> None:
    buckets = RateBuckets(Limits(requests_per_minute=600, tokens_per_minute=60_000), now=0.0)
    assert buckets.requests is not None and buckets.tokens is not None
    assert buckets.requests.capacity == pytest.approx(10.0)
    assert buckets.tokens.capacity == pytest.approx(1_000.0)
    assert buckets.requests.level == buckets.tokens.level == 0.0
    server = RateBuckets(Limits(requests_per_minute=600, tokens_per_minute=60_000), now=0.0, start_full=True)
    assert server.requests is not None and server.requests.level == pytest.approx(10.0)


def test_low_limits_still_hold_one_whole_request() -> None:
    buckets = RateBuckets(Limits(requests_per_minute=6, tokens_per_minute=None), now=0.0)
    assert buckets.requests is not None and buckets.requests.capacity == 1.0
    assert buckets.tokens is None


def test_both_buckets_must_have_room_and_neither_is_charged_otherwise() -> None:
    buckets = RateBuckets(Limits(requests_per_minute=600, tokens_per_minute=6_000), now=0.0, start_full=True)  # 10 req/s, 100 tok/s
    assert buckets.try_take(100, now=0.0) == 0.0  # the token bucket (100) is now empty
    wait = buckets.try_take(50, now=0.0)
    assert wait == pytest.approx(0.5)  # tokens bind: 50 tokens at 100/s
    assert buckets.requests is not None and buckets.requests.level == pytest.approx(9.0)  # not charged
    assert buckets.try_take(50, now=0.5) == 0.0


def test_request_bucket_binds_when_requests_are_small() -> None:
    buckets = RateBuckets(Limits(requests_per_minute=60, tokens_per_minute=1_000_000), now=0.0, start_full=True)  # 1 req/s
    assert buckets.try_take(1, now=0.0) == 0.0
    assert buckets.try_take(1, now=0.0) == pytest.approx(1.0)


def test_unlimited_buckets_never_wait() -> None:
    buckets = RateBuckets(Limits(None, None), now=0.0)
    assert all(buckets.try_take(10**9, now=0.0) == 0.0 for _ in range(1_000))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests_per_minute": 0, "tokens_per_minute": 1},
        {"requests_per_minute": 1, "tokens_per_minute": -5},
        {"requests_per_minute": 1, "tokens_per_minute": 1, "burst_seconds": 0},
    ],
)
def test_limits_reject_non_positive_values(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Limits(**kwargs)


# -- InProcessLimiter ---------------------------------------------------------------------------------


async def test_limiter_paces_evenly_at_the_request_rate() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(Limits(requests_per_minute=600, tokens_per_minute=None), clock=clock, sleep=clock.sleep)
    start = clock.now
    sent_at = []
    for _ in range(110):
        await limiter.acquire(tokens=1)
        sent_at.append(clock.now - start)
    # The bucket starts empty: no burst at all, one every 0.1 s from the first request on.
    assert sent_at[0] == pytest.approx(0.1)
    assert sent_at[-1] == pytest.approx(11.0)
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert all(gap == pytest.approx(0.1) for gap in gaps)


async def test_limiter_paces_by_tokens_when_they_bind() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(Limits(requests_per_minute=60_000, tokens_per_minute=60_000), clock=clock, sleep=clock.sleep)  # 1,000 tok/s
    start = clock.now
    for _ in range(20):
        await limiter.acquire(tokens=500)
    # 20 x 500 tokens at 1,000 tokens/s, from an empty bucket: 10 s.
    assert clock.now - start == pytest.approx(10.0)


async def test_limiter_lets_an_oversize_request_through_instead_of_deadlocking() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(Limits(requests_per_minute=None, tokens_per_minute=6_000), clock=clock, sleep=clock.sleep)  # 100 tok/s, capacity 100
    start = clock.now
    await limiter.acquire(tokens=1_000)  # ten times the bucket: goes as soon as the bucket is full (1 s)
    assert clock.now - start == pytest.approx(1.0)
    await limiter.acquire(tokens=10)  # pays the 900-token debt first, then 10: 9.1 s more
    assert clock.now - start == pytest.approx(10.1)


async def test_pause_blocks_everyone_then_resumes_paced_not_in_a_burst() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(Limits(requests_per_minute=600, tokens_per_minute=None), clock=clock, sleep=clock.sleep)
    await limiter.pause(2.0)
    start = clock.now
    sent_at = []
    for _ in range(5):
        await limiter.acquire(tokens=1)
        sent_at.append(clock.now - start)
    # Nothing before the pause ends; then the bucket refills from empty: one every 0.1 s, no burst of 10.
    assert sent_at == pytest.approx([2.1, 2.2, 2.3, 2.4, 2.5])
    assert limiter.paused_until == pytest.approx(start + 2.0)


async def test_a_shorter_pause_does_not_shorten_a_longer_one() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(Limits(requests_per_minute=6_000, tokens_per_minute=None), clock=clock, sleep=clock.sleep)
    await limiter.pause(3.0)
    await limiter.pause(1.0)
    start = clock.now
    await limiter.acquire(tokens=1)
    assert clock.now - start >= 3.0


async def test_waiting_is_computed_not_polled() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(Limits(requests_per_minute=60, tokens_per_minute=None), clock=clock, sleep=clock.sleep)
    await limiter.acquire(tokens=1)
    await limiter.acquire(tokens=1)
    assert clock.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]  # one sleep of exactly the needed time each, no 1 ms loop


async def test_concurrent_callers_are_served_in_arrival_order() -> None:
    clock = FakeClock()
    limiter = InProcessLimiter(Limits(requests_per_minute=60, tokens_per_minute=None), clock=clock, sleep=clock.sleep)
    order: list[int] = []

    async def caller(number: int) -> None:
        await limiter.acquire(tokens=1)
        order.append(number)

    await asyncio.gather(*(caller(n) for n in range(5)))
    assert order == [0, 1, 2, 3, 4]


def test_in_process_limiter_implements_the_interface() -> None:
    assert isinstance(InProcessLimiter(Limits(1, 1)), RateLimiter)


def test_a_pause_overlaps_repaying_a_debt_instead_of_adding_to_it() -> None:
    bucket = TokenBucket(rate=100.0, capacity=100.0, now=0.0)
    bucket.take(1_000, now=0.0)  # 900 in debt: repaid by t=9
    bucket.empty_at(5.0, now=0.0)  # a 5 s pause right away
    assert bucket.wait_time(10, now=5.0) == pytest.approx(4.1)  # the other 400 of debt, then 10: t=9.1, not 14.1


async def test_waits_below_the_clocks_resolution_do_not_spin_on_a_large_clock() -> None:
    clock = FakeClock(now=1.7e9)  # time.time()-sized values: float spacing ~2.4e-7 s
    limiter = InProcessLimiter(Limits(requests_per_minute=600, tokens_per_minute=None), clock=clock, sleep=clock.sleep)
    for _ in range(5):
        await asyncio.wait_for(limiter.acquire(tokens=1), timeout=1)
    assert len(clock.sleeps) < 20


async def test_negative_token_counts_are_refused() -> None:
    limiter = InProcessLimiter(Limits(requests_per_minute=None, tokens_per_minute=6_000))
    with pytest.raises(ValueError):
        await limiter.acquire(tokens=-1_000)


# -- output tokens (Anthropic's OTPM) ----------------------------------------------------------------------


async def test_output_tokens_are_reserved_when_sent_and_what_went_unused_comes_back() -> None:
    clock = FakeClock()
    # 6,000 output tokens a minute: 100 a second, and the bucket holds one second of it (100), as a server
    # enforcing the limit over one second does: a reservation of 400 waits for a full bucket and takes it into debt.
    limiter = InProcessLimiter(Limits(None, None, output_tokens_per_minute=6_000), clock=clock, sleep=clock.sleep)
    start = clock.now
    await limiter.acquire(tokens=10, output_tokens=400)  # from an empty bucket to a full one: 1 s
    assert clock.now - start == pytest.approx(1.0)
    assert limiter.wait_time(10, 400) == pytest.approx(4.0)  # 300 in debt, then full again
    await limiter.refund(360)  # the answer used 40 of its 400
    assert limiter.wait_time(10, 400) == pytest.approx(0.4)  # at 60: 40 to go
    admitted = await limiter.acquire(tokens=10, output_tokens=400)
    assert clock.now - start == pytest.approx(1.4) and admitted.output_tokens == 800 - 360


def test_a_refund_wakes_the_request_waiting_for_output_tokens() -> None:
    async def main() -> float:
        limiter = InProcessLimiter(Limits(None, None, output_tokens_per_minute=6_000))  # the loop's clock and sleep
        await limiter.acquire(tokens=1, output_tokens=400)
        start = virtual_time()
        waiting = asyncio.create_task(limiter.acquire(tokens=1, output_tokens=400))  # told to sleep 4 s
        await asyncio.sleep(0.1)  # the first answer comes after 0.1 s, having used 40 of its 400
        await limiter.refund(360)
        await waiting
        return virtual_time() - start

    # Woken by the refund: 70 of 100 after it, full 0.3 s later, not at the 4 s it was first told.
    assert run_virtual(main()) == pytest.approx(0.4)


async def test_an_output_bucket_of_a_minute_holds_the_reservations_in_flight() -> None:
    clock = FakeClock()
    # A server whose output bucket fills up to a minute (the tuner sees it in `remaining`): so does ours.
    limits = Limits(None, None, output_tokens_per_minute=6_000, output_burst_seconds=60)
    limiter = InProcessLimiter(limits, clock=clock, sleep=clock.sleep)
    clock.now += 120  # idle two minutes: the bucket fills to a minute's worth
    start = clock.now
    for _ in range(15):  # 15 x 400 = 6,000 reserved at once, as 15 requests in flight would
        await limiter.acquire(tokens=1, output_tokens=400)
    assert clock.now == start
    await limiter.acquire(tokens=1, output_tokens=400)
    assert clock.now - start == pytest.approx(4.0)


async def test_a_refund_never_fills_the_bucket_beyond_its_capacity() -> None:
    buckets = RateBuckets(Limits(None, None, output_tokens_per_minute=600, output_burst_seconds=60), now=0.0, start_full=True)  # capacity 600
    buckets.give_back(10_000, now=0.0)
    assert buckets.output_tokens is not None and buckets.output_tokens.level == 600
