"""Arrival modes: even gaps (the limiter's pacing, or a fixed rate) and Poisson's exponential gaps, still
never above the limits. The gaps are read from the mock's own record of when each request arrived, in
virtual time (so a send and its arrival are the same instant).
"""

from __future__ import annotations

import asyncio
import random
import statistics
from typing import Any

import pytest

from rate_limited_processor import UNLIMITED, Limits, Processor, ResultKind, Settings, TransportRequest
from rate_limited_processor.core.arrivals import Arrivals, gap
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from tests.helpers import chat_request, mock_url
from tests.virtual_time import run_virtual


def coefficient_of_variation(values: list[float]) -> float:
    return statistics.pstdev(values) / statistics.fmean(values)


def send_gaps(settings: Settings, count: int, config: MockConfig | None = None) -> list[float]:
    api = MockApi(config or MockConfig())

    async def main() -> None:
        async with Processor(settings, transport=MockTransport(api)).run([chat_request(i) for i in range(count)]) as results:
            assert all([result.kind is ResultKind.SUCCEEDED async for result in results])

    run_virtual(main())
    arrived = [entry.arrived_at for entry in api.record]
    assert len(arrived) == count
    return [later - earlier for earlier, later in zip(arrived, arrived[1:], strict=False)]


def settings_for(**overrides: Any) -> Settings:
    return Settings(**{"request_url": mock_url(), "api_key": None, "limits": UNLIMITED, **overrides})


# -- pure ------------------------------------------------------------------------------------------------------


def test_gaps_are_even_or_exponential_at_the_rate() -> None:
    rng = random.Random(5)
    assert gap("even", 4.0, rng) == 0.25
    assert gap("poisson", None, rng) == gap("even", float("inf"), rng) == 0.0
    draws = [gap("poisson", 4.0, rng) for _ in range(20_000)]
    assert statistics.fmean(draws) == pytest.approx(0.25, rel=0.03)
    assert coefficient_of_variation(draws) == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="positive"):
        gap("poisson", 0.0, rng)


def test_the_next_send_is_due_a_gap_after_the_last_release_at_the_rate_asked_then() -> None:
    arrivals = Arrivals("even")
    assert arrivals.due(10.0) is None  # the first goes at once
    arrivals.released(100.0)
    assert arrivals.due(10.0) == pytest.approx(100.1)
    assert arrivals.due(1.0) == pytest.approx(100.1)  # drawn once per send
    arrivals.released(105.0)  # released late (the limiter held it): no burst to catch up
    assert arrivals.due(2.0) == pytest.approx(105.5)
    same_seed = [Arrivals("poisson", seed=9) for _ in range(2)]
    for arrivals in same_seed:
        arrivals.released(0.0)
    assert same_seed[0].due(3.0) == same_seed[1].due(3.0)


# -- runs ------------------------------------------------------------------------------------------------------


def test_poisson_sends_have_exponential_gaps_at_the_rate() -> None:
    gaps = send_gaps(settings_for(arrivals="poisson", request_rate=50.0), 1_000)
    assert 0.8 <= coefficient_of_variation(gaps) <= 1.2
    assert statistics.fmean(gaps) == pytest.approx(1 / 50, rel=0.06)


def test_even_sends_are_evenly_spaced_at_a_rate_or_at_the_limits() -> None:
    fixed = send_gaps(settings_for(request_rate=50.0), 500)
    assert coefficient_of_variation(fixed) < 0.01 and statistics.fmean(fixed) == pytest.approx(0.02, rel=0.01)
    paced = send_gaps(settings_for(limits=Limits(3_000, 10_000_000)), 500)  # today's pacing: the limiter alone
    assert coefficient_of_variation(paced) < 0.05 and statistics.fmean(paced) == pytest.approx(0.02, rel=0.02)


def test_poisson_at_the_request_limit_never_exceeds_it() -> None:
    # No --request_rate: Poisson gaps at the request limit; its bursts above the limit wait in the limiter. The
    # judge is the mock enforcing the same limit (its one-second bucket): any 429 would be a send above it, and
    # `send_gaps` counts one arrival per request, so none came.
    config = MockConfig(requests_per_minute=3_000, burst_seconds=1.0)
    gaps = send_gaps(settings_for(arrivals="poisson", limits=Limits(3_000, 10_000_000)), 800, config)
    assert 0.8 <= coefficient_of_variation(gaps) <= 1.2  # a one-second bucket absorbs most of Poisson's bursts
    assert statistics.fmean(gaps) >= 1 / 50 * 0.99  # and no faster than 50 a second over the run


def test_max_in_flight_stays_the_cap_with_poisson_arrivals() -> None:
    in_flight = peak = 0

    async def slow(request: TransportRequest) -> dict[str, Any]:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.5)
        in_flight -= 1
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}

    async def main() -> None:
        async with Processor(settings_for(arrivals="poisson", request_rate=100.0, max_in_flight=3), transport=slow).run(
            [chat_request(i) for i in range(60)]
        ) as results:
            assert len([result async for result in results]) == 60

    run_virtual(main())
    assert peak == 3
