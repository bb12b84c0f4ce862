"""The engine's small parts on their own: the run's health, a lane's counters and its say on the next request,
the limits the run's pace is held against, and the stats written through their methods. Pure: no loop, no clock."""

from __future__ import annotations

from rate_limited_processor import Limits, Settings
from rate_limited_processor.base.clock import Clock
from rate_limited_processor.config.credentials import scrubber_for
from rate_limited_processor.config.settings import Account
from rate_limited_processor.core.limiter import InProcessLimiter
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.engine.health import OUTAGE_ATTEMPTS, Health
from rate_limited_processor.engine.lanes import Lanes
from tests.helpers import mock_url


def _health() -> Health:
    return Health(scrubber_for(Settings(request_url=mock_url(), api_key=None)))


KNOWN = Limits(600, 60_000)


def _alone(health: Health) -> bool:
    """`Health.one_at_a_time`, read afresh each time (mypy would keep a property's value from one assert to the next)."""
    return health.one_at_a_time


def _lanes(*accounts: Account, limits: Limits = KNOWN) -> Lanes:
    settings = Settings(request_url=mock_url(), api_key=None, limits=limits, accounts=accounts)
    return Lanes(settings, make_limiter=lambda account, model, limits: InProcessLimiter(limits, clock=lambda: 0.0), clock=Clock(now=lambda: 0.0))


def test_a_failure_about_the_endpoint_makes_the_run_go_one_at_a_time_until_something_succeeds() -> None:
    health = _health()
    assert not _alone(health)
    health.observe(succeeded=False, about_the_endpoint=True, answered=True, started=0.0, now=1.0, reason="HTTP 404")
    assert _alone(health)
    health.observe(succeeded=True, about_the_endpoint=False, answered=True, started=1.0, now=2.0, reason="")
    assert not _alone(health)


def test_silence_after_a_success_is_an_outage_from_the_third_unanswered_attempt_and_an_answer_ends_it() -> None:
    health = _health()
    health.observe(succeeded=True, about_the_endpoint=False, answered=True, started=0.0, now=1.0, reason="")
    outages = [
        health.observe(succeeded=False, about_the_endpoint=False, answered=False, started=2.0 + i, now=5.0 + i, reason="reset")
        for i in range(OUTAGE_ATTEMPTS)
    ]
    assert outages[:-1] == [None] * (OUTAGE_ATTEMPTS - 1) and _alone(health)
    assert outages[-1] == (5.0 + OUTAGE_ATTEMPTS - 1) - 2.0, "silent since the first unanswered attempt was sent"
    health.observe(succeeded=False, about_the_endpoint=False, answered=True, started=9.0, now=10.0, reason="HTTP 500")
    assert not _alone(health) and health.silent_since is None


def test_an_attempt_sent_before_the_last_answer_is_no_sign_of_an_outage() -> None:
    health = _health()
    health.observe(succeeded=True, about_the_endpoint=False, answered=True, started=0.0, now=3.0, reason="")
    assert health.observe(succeeded=False, about_the_endpoint=False, answered=False, started=2.0, now=4.0, reason="reset") is None
    assert health.silent_attempts == 0


def test_a_lane_counts_what_went_through_it_and_holds_the_next_request_while_its_first_awaits_its_answer() -> None:
    lanes = _lanes(limits=Limits(None, None))  # limits to learn from the first answer
    lane = lanes.choose("m", tokens=10)
    assert lane.may_take_one_more(0.0, anything_in_flight=False)
    lane.sending(0.0)
    assert (lane.in_flight, lane.sent) == (1, 1) and lane.probing(0.1)
    assert not lane.may_take_one_more(0.1, anything_in_flight=True), "its first answer tells its limits: wait for it"
    assert not lane.probing(2.5) and lane.may_take_one_more(2.5, anything_in_flight=True), "an overdue answer: the others start"
    assert lane.may_take_one_more(0.1, anything_in_flight=False), "nothing in flight: always one more"
    lane.answered(succeeded=False, rate_limited=True)
    lane.ended()
    assert (lane.in_flight, lane.succeeded, lane.rate_limited) == (0, 0, 1)
    assert lane.report().rate_limited == 1


def test_the_pace_is_the_lanes_limits_added_up_over_the_accounts_in_use() -> None:
    assert _lanes().pace() is None, "no lane made: the limits given stand"
    a, b = Account("a", limits=Limits(60, None)), Account("b", limits=Limits(120, None))
    lanes = _lanes(a, b)
    lanes.lane(a, "m"), lanes.lane(b, "m")
    pace = lanes.pace()
    assert pace is not None and pace[1] is None, "nothing sent: no token ratio to weigh"
    assert pace[0].requests_per_minute == 180
    lanes.drop("a", "HTTP 401")
    pace = lanes.pace()
    assert pace is not None and pace[0].requests_per_minute == 120


def test_run_stats_keep_the_first_stop_reason_and_count_each_wait_for_a_slot_once() -> None:
    stats = RunStats(Limits(None, None), started_at=0.0, clock=lambda: 0.0)
    stats.stop("budget")
    stats.stop("later")
    assert stats.stop_reason == "budget"
    stats.waiting_for_slot(True)
    assert stats.at_in_flight_cap
    stats.waiting_for_slot(False)
    assert (stats.in_flight_cap_waits, stats.at_in_flight_cap) == (1, False)
    stats.pace(Limits(100, None), None)
    assert stats.limits.requests_per_minute == 100 and stats.server_token_ratio == 1.0


def test_the_run_ends_when_an_attempt_was_cancelled_before_its_first_step() -> None:
    """An abort (a disk that fills, the caller gone) cancels the attempts in flight; one not yet started never runs
    its own clean-up. The run's end must not wait on it forever (it spun at 100% CPU: seen in a CI run)."""
    import asyncio

    from rate_limited_processor.engine.processor import Processor

    async def main() -> None:
        processor = Processor(Settings(request_url=mock_url(), api_key=None))
        run = processor._run
        attempt_ran = False

        async def attempt() -> None:
            nonlocal attempt_ran
            attempt_ran = True

        feeder = asyncio.get_running_loop().create_future()
        feeder.set_result(None)
        run.feeder = feeder  # type: ignore[assignment]
        task = asyncio.create_task(attempt())
        run.in_flight.add(task)
        task.cancel()  # before its first step: it never runs, so nothing of it takes it out of in_flight
        await asyncio.wait_for(processor._finish(), timeout=5.0)
        assert not attempt_ran and not run.in_flight and await run.results.get() is not None

    asyncio.run(main())
