"""The deadline plan (`core/deadline_plan.py`): pure, on explicit time."""

from __future__ import annotations

import math

import pytest

from rate_limited_processor.core.deadline_plan import (
    MAX_CANCEL_SECONDS,
    MIN_CANCEL_SECONDS,
    MIN_MARGIN_SECONDS,
    Decision,
    OnlineCapacity,
    Outcome,
    Route,
    Work,
    cancel_seconds,
    decide,
    estimate,
    format_estimate,
    format_outcome,
    margin_seconds,
    rescue_at,
    rescue_seconds,
)

RPM_1200 = OnlineCapacity(requests_per_minute=1_200, tokens_per_minute=None)


def test_the_online_time_is_set_by_the_limit_that_binds_and_the_headroom() -> None:
    assert RPM_1200.seconds_for(Work(400, 10_000)) == 20.0
    both = OnlineCapacity(requests_per_minute=1_200, tokens_per_minute=60_000)
    assert both.seconds_for(Work(400, 100_000)) == 100.0, "the token limit binds: 100,000 tokens at 60,000 a minute"
    assert OnlineCapacity(1_200, None, headroom=0.5).seconds_for(Work(400, 0)) == 40.0
    assert RPM_1200.seconds_for(Work(0, 0)) == 0.0
    assert math.isinf(OnlineCapacity(None, None).seconds_for(Work(1, 1)))


def test_an_output_token_limit_apart_binds_by_the_lines_completion_budgets_in_batches_or_free() -> None:
    # Anthropic: 400 lines of 50 input tokens and a max_tokens of 200, at 1,200 RPM, 1M input tokens and 120,000
    # output tokens a minute: 20 s by requests, 1.2 s by input, 40 s by output.
    anthropic = OnlineCapacity(1_200, 1_000_000, output_tokens_per_minute=120_000)
    work = Work(400, 20_000, output_tokens=80_000)
    assert anthropic.seconds_for(work) == 40.0
    assert OnlineCapacity(1_200, 1_000_000).seconds_for(work) == 20.0, "no output limit: the requests bind"
    assert OnlineCapacity(None, None, output_tokens_per_minute=120_000).known
    half_free = Work(400, 20_000, free_lines=200, free_tokens=10_000, output_tokens=80_000, free_output_tokens=40_000)
    assert anthropic.seconds_for(half_free.in_batches) == 20.0, "the batches' lines: half the budgets"
    assert rescue_seconds(anthropic, work, cancel=5.0) == 5.0 + 40.0 + 4.0, "the margin: a tenth of 40 s"


def test_the_rescue_starts_when_the_unfinished_lines_could_only_just_be_finished_online_with_the_margin() -> None:
    work = Work(400, 0)
    assert rescue_seconds(RPM_1200, work, cancel=cancel_seconds(30.0)) == MIN_CANCEL_SECONDS + 20.0 + MIN_MARGIN_SECONDS
    assert rescue_at(0.0, 60.0, RPM_1200, work) == 60.0 - MIN_CANCEL_SECONDS - 20.0 - MIN_MARGIN_SECONDS
    assert decide(30.0, 60.0, RPM_1200, work) is Decision.WAIT
    assert decide(32.0, 60.0, RPM_1200, work) is Decision.RESCUE, "60 - 5 for the cancel - 20 online - 3 = 32"
    assert decide(31.99, 60.0, RPM_1200, work) is Decision.WAIT
    assert decide(32.0, 60.0, RPM_1200, Work(100, 0)) is Decision.WAIT, "batches finished lines: the rescue may wait longer"
    assert decide(59.9, 60.0, RPM_1200, Work(0, 0)) is Decision.WAIT, "nothing left: nothing to rescue"


def test_lines_in_no_batch_go_online_during_the_cancel_so_only_the_batches_lines_wait_for_it() -> None:
    in_batches = Work(400, 0)
    half_free = Work(400, 0, free_lines=200)
    all_free = Work(400, 0, free_lines=400)
    assert rescue_seconds(RPM_1200, all_free, cancel_seconds(30.0)) == 20.0 + MIN_MARGIN_SECONDS, "no batch to cancel: online time only"
    assert rescue_seconds(RPM_1200, half_free, cancel_seconds(30.0)) == 20.0 + MIN_MARGIN_SECONDS, "the 5 s cancel is spent on the free 10 s of lines"
    assert rescue_seconds(RPM_1200, Work(400, 0, free_lines=40), cancel_seconds(30.0)) == MIN_CANCEL_SECONDS + 18.0 + MIN_MARGIN_SECONDS, (
        "2 s of free lines, then an idle wait for the cancel, then 18 s of the batches' lines"
    )
    assert rescue_at(0.0, 60.0, RPM_1200, half_free) > rescue_at(0.0, 60.0, RPM_1200, in_batches)


def test_the_margin_grows_with_the_online_time_and_the_time_left_for_a_cancel() -> None:
    assert margin_seconds(3_600.0) == 360.0 and margin_seconds(1.0) == MIN_MARGIN_SECONDS
    assert cancel_seconds(7_200.0) == 360.0 and cancel_seconds(30.0) == MIN_CANCEL_SECONDS
    assert cancel_seconds(86_400.0) == MAX_CANCEL_SECONDS, "OpenAI: cancelling takes up to 10 minutes"
    assert rescue_seconds(OnlineCapacity(60, None), Work(3_600, 0), cancel_seconds(7_200.0)) == 360.0 + 3_600.0 + 360.0


def test_a_deadline_with_time_for_a_batch_plans_batches_and_one_without_plans_all_online() -> None:
    roomy = estimate(0.0, 60.0, RPM_1200, Work(400, 24_000), batch_dollars=1.0, online_dollars=2.0)
    assert roomy.route is Route.BATCH and roomy.rescue_in == pytest.approx(60.0 - 5.0 - 20.0 - 3.0)
    text = format_estimate(roomy)
    assert "all online at the limits: 20 s" in text and "$1.00" in text and "$2.00" in text and "through batches" in text
    tight = estimate(0.0, 24.0, RPM_1200, Work(400, 24_000), batch_dollars=1.0, online_dollars=2.0)
    assert tight.route is Route.ONLINE and "all online now" in format_estimate(tight)


def test_with_the_limits_unknown_the_plan_says_so_and_plans_batches_when_the_deadline_allows_one() -> None:
    unknown = estimate(0.0, 3_600.0, OnlineCapacity(None, None), Work(1, 10), None, None)
    text = format_estimate(unknown)
    assert unknown.route is Route.BATCH and "plan: every line through batches" in text
    assert "limits unknown" in text and "learns them from one request" in text and "give --max_requests_per_minute" in text
    assert "no time to try a batch" not in text and "cannot be met" not in text
    too_near = estimate(0.0, 6.0, OnlineCapacity(None, None), Work(1, 10), None, None)
    assert too_near.route is Route.ONLINE and "limits unknown" in format_estimate(too_near) and "cannot be met" not in format_estimate(too_near)


def test_the_outcome_says_each_way_and_the_saving_against_all_online() -> None:
    text = format_outcome(Outcome(batched=300, batch_dollars=1.5, online=100, online_dollars=1.0, all_online_dollars=4.0, cancels=2))
    assert "300 lines through batches ($1.50)" in text and "100 online ($1.00)" in text and "2 batch cancel(s)" in text
    assert "saved $1.50 against all online ($4.00)" in text
    unpriced = format_outcome(Outcome(1, None, 0, 0.0, None, 0))
    assert "unknown cost" in unpriced and "saved" not in unpriced


def test_the_cancel_allowance_is_fixed_when_the_plan_begins_not_shrunk_to_its_floor_as_the_rescue_nears() -> None:
    """Taken from the time left at each poll, the allowance would be 5 s by the rescue whatever the deadline, and
    a cancel of a minute (OpenAI: up to 10) would make a 2 h plan late."""
    work = Work(400, 0)  # 20 s online at 1,200 RPM
    allowance = cancel_seconds(7_200.0)
    assert allowance == 360.0
    assert rescue_at(6_000.0, 7_200.0, RPM_1200, work, allowance) == 7_200.0 - 360.0 - 20.0 - MIN_MARGIN_SECONDS
    assert decide(6_817.0, 7_200.0, RPM_1200, work, allowance) is Decision.RESCUE
    assert decide(6_817.0, 7_200.0, RPM_1200, work) is Decision.WAIT, "the allowance from the time left: 19 s, not 360"
