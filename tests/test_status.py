"""Counters, the rate meter, the status line, the progress display and the summary: pure, on a fake clock."""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import pytest

from rate_limited_processor.base.models import RequestResult, ResultKind
from rate_limited_processor.core.costs import PriceBook
from rate_limited_processor.core.limiter import Limits
from rate_limited_processor.core.stats import RateMeter, RunStats
from rate_limited_processor.ui.display import ProgressDisplay, StatusDigest, describe_pace, waiting_note
from rate_limited_processor.ui.summary import format_summary, summary_record


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rate_meter_reports_per_minute_over_its_window_and_forgets_old_events() -> None:
    clock = Clock()
    meter = RateMeter(window=10.0, clock=clock)
    for _ in range(20):  # 20 requests of 100 tokens within the window
        meter.record(100)
        clock.now += 0.25
    requests, tokens = meter.per_minute()
    assert requests == pytest.approx(20 * 6)
    assert tokens == pytest.approx(2_000 * 6)
    clock.now += 20.0
    assert meter.per_minute() == (0.0, 0.0)


def finished_stats(**counts: int) -> RunStats:
    stats = RunStats(Limits(requests_per_minute=600, tokens_per_minute=60_000), started_at=0.0, finished_at=120.0)
    for name, value in counts.items():
        setattr(stats, name, value)
    return stats


def test_summary_reports_outcomes_rates_against_limits_and_tokens() -> None:
    stats = finished_stats(succeeded=900, failed=7, invalid=3, attempts=1_000, retries=93, rate_limit_errors=5, tokens_charged=100_000)
    stats.total = 910
    stats.estimated_tokens_succeeded = 90_000
    stats.reported_total_tokens = 80_500
    stats.reported_prompt_tokens = 60_000
    text = format_summary(stats, save_path="out.jsonl")
    assert "requests done    910 of 910" in text
    assert "succeeded      900" in text
    assert "failed         7" in text
    assert "invalid input  3" in text
    assert "1,000 (93 retries, 5 rate-limit 429s)" in text
    assert "2m00s" in text
    assert "500 requests/min (83% of the 600 limit)" in text
    assert "50,000 tokens/min (83% of the 60,000 limit)" in text
    assert "estimated 90,000" in text and "reported by the API 80,500 (60,000 prompt)" in text
    assert "out.jsonl" in text
    assert "STOPPED" not in text


def test_summary_of_a_stopped_run_says_why_and_what_is_left() -> None:
    stats = finished_stats(succeeded=10, unfinished=4, attempts=14)
    stats.total = 100
    stats.stop_reason = "HTTP 401 invalid_api_key: Incorrect API key provided"
    text = format_summary(stats)
    assert "STOPPED EARLY: HTTP 401 invalid_api_key" in text
    assert "not finished   90 (no final answer, so no row); rerun to send them" in text


def test_summaries_that_would_mislead_say_what_happened() -> None:
    # Nothing succeeded: no throughput to speak of (its "rate" would be of failures).
    failed = finished_stats(failed=3, attempts=15, tokens_charged=300)
    failed.total = 3
    text = format_summary(failed)
    assert "throughput       none: no request succeeded" in text and "requests/min" not in text
    # A limit given and lowered to what the API states says so.
    lowered = finished_stats(succeeded=220, attempts=220, tokens_charged=22_000)
    lowered.limits = Limits(500, 60_000)
    text = format_summary(lowered, given=Limits(2_000, 60_000))
    assert "110 requests/min (22% of the 500 limit the API states; the 2,000 given was lowered to it)" in text
    assert "11,000 tokens/min (18% of the 60,000 limit)" in text
    # The Batch API: no rate limit paced it, and its tokens were charged to none.
    batch = finished_stats(succeeded=1_000, attempts=0)
    batch.limits, batch.batch = Limits(None, None), True
    text = format_summary(batch)
    assert "500 requests/min, through the Batch API (no rate limit paces it)" in text
    assert "limit not known" not in text and "tokens/min" not in text


def test_a_success_counts_its_estimate_against_the_usage_the_api_reported() -> None:
    stats = finished_stats()
    responses: list[dict[str, Any]] = [
        {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}},
        {"usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}},  # /responses
        {"usage": {"input_tokens": 4, "cache_read_input_tokens": 6, "output_tokens": 2}},  # Anthropic: no total
        {"no usage": True},
    ]
    for estimate, response in zip((50, 40, 35, 30), responses, strict=True):
        result = RequestResult(
            1, {"model": "gpt-4o-mini"}, None, response, (), 1, ResultKind.SUCCEEDED, estimated_tokens=estimate, estimated_output_tokens=20,
            estimated_prompt_tokens=estimate - 20,
        )
        stats.record_result(result)
    assert (stats.succeeded, stats.estimated_tokens_succeeded) == (4, 155)
    assert (stats.reported_prompt_tokens, stats.reported_total_tokens) == (27, 37)
    [estimated] = stats.estimated_cost.priced(PriceBook()).by_model
    [spent] = stats.spent.priced(PriceBook()).by_model
    assert (estimated.requests, estimated.input_tokens, estimated.output_tokens) == (4, 155 - 80, 80)
    assert (spent.requests, spent.input_tokens, spent.output_tokens) == (3, 27, 10)


def test_progress_display_shows_done_over_total_with_rates_retries_and_failures() -> None:
    stream = io.StringIO()
    stats = finished_stats()
    stats.total = 4
    display = ProgressDisplay(stats, enabled=True, stream=stream)
    stats.succeeded, stats.failed = 2, 1
    stats.retries, stats.rate_limit_errors = 5, 2
    display.update()
    display.close()
    out = stream.getvalue()
    assert "3/4" in out and "5 retries, 2 429s, 1 failed" in out
    assert "/600 RPM" in out and "/60k TPM" in out  # the limits the run paces to are on the bar


def drawn_lines(output: str) -> list[str]:
    """What a terminal shows last of tqdm's output: each line's last redraw, escape sequences left out."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "\n", output)
    return [line.rsplit("\r", 1)[-1] for line in text.split("\n") if line.rsplit("\r", 1)[-1].strip()]


@pytest.mark.parametrize("width", [80, 60])
def test_on_a_narrow_terminal_done_total_the_pace_against_the_limit_429s_and_failures_all_show(width: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm.std

    clock = Clock()
    monkeypatch.setattr(tqdm.std, "time", clock)  # tqdm's own clock too, for its rate and time left
    stats = RunStats(Limits(600, 60_000), started_at=0.0, clock=clock)
    stats.total = 1_000_000
    stream = io.StringIO()
    display = ProgressDisplay(stats, enabled=True, stream=stream, width=width, given=Limits(None, None))
    clock.now = 100.0
    stats.succeeded, stats.failed, stats.retries, stats.rate_limit_errors = 543_210, 1_234, 56_789, 4_321
    stats.attempts = stats.answers = 600_000
    stats.last_answer_at = 85.0  # quiet for 15 s: the wait is shown too, where it fits
    display.tick()
    bar, status = drawn_lines(stream.getvalue())[-2:]
    assert all(len(line) <= width for line in (bar, status)), (bar, status)
    assert "544444/1000000" in bar and "%|" in bar and "|" in bar.split("%|", 1)[1]  # done/total, and a bar of some length
    assert len(bar.split("%|", 1)[1].split("|", 1)[0]) >= (20 if width == 80 else 5)
    assert "/600 RPM" in status and "4,321 429s" in status and "1,234 failed" in status
    if width == 80:
        assert "; no answer for 15.0s, 0 in flight" in status
    display.close()
    assert drawn_lines(stream.getvalue())[-1] == status  # what it ended on stays on the screen


def test_disabled_progress_display_writes_nothing() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(finished_stats(), enabled=False, stream=stream)
    display.update()
    display.close()
    assert stream.getvalue() == ""


def test_status_line_says_what_the_last_interval_added_the_pace_and_the_time_left() -> None:
    stats = RunStats(Limits(600, 60_000), started_at=0.0, clock=Clock())
    stats.total = 2_000
    digest = StatusDigest(stats, 30.0, now=0.0, given=Limits(None, 60_000))
    assert not digest.due(29.9)
    stats.succeeded, stats.failed = 290, 10
    stats.attempts, stats.retries, stats.rate_limit_errors, stats.tokens_charged = 312, 12, 4, 15_000
    stats.answers, stats.last_answer_at = 310, 29.5
    assert digest.due(30.0) and digest.had_trouble(stats)
    assert digest.line(stats, 30.0) == (
        "300/2,000 done (15%); last 30.0s: 12 retries, 4 rate-limit 429s, 10 failed; "
        "624 of 600 RPM, 30,000 of 60,000 TPM (RPM limit learned, TPM limit given); ETA 2m50s"  # 1,700 left at 10/s
    )
    # A quiet interval: nothing new, and the API has not answered for 30 s.
    assert not digest.had_trouble(stats)
    assert digest.line(stats, 60.0) == (
        "300/2,000 done (15%); last 30.0s: 0 retries, 0 rate-limit 429s, 0 failed; "
        "0 of 600 RPM, 0 of 60,000 TPM (RPM limit learned, TPM limit given); ETA 5m40s; waiting: no answer for 30.5s, 2 in flight"
    )


def test_status_line_of_a_resumed_run_counts_the_earlier_work_as_done_but_not_in_the_pace() -> None:
    stats = RunStats(Limits(None, None), started_at=0.0, clock=Clock())
    stats.total, stats.earlier_rows, stats.already_done = 10_000, 8_000, 7_990  # the reader has not reached the last 10 yet
    digest = StatusDigest(stats, 10.0, now=0.0)
    stats.succeeded = stats.attempts = stats.answers = 100
    stats.last_answer_at = 10.0
    line = digest.line(stats, 10.0)
    assert line.startswith("8,100/10,000 done (81%), 8,000 of them by an earlier run;")
    assert "600 RPM (limit not known), 0 TPM (limit not known)" in line
    assert line.endswith("ETA 3m10s")  # 1,900 left at this run's 10/s, not at (8,100 / 10 s)


def test_the_display_says_it_is_waiting_when_the_api_goes_quiet() -> None:
    clock = Clock()
    stats = RunStats(Limits(600, 60_000), started_at=0.0, clock=clock)
    stats.attempts = 40
    assert waiting_note(stats, 4.9) is None  # a few seconds without an answer is normal
    assert waiting_note(stats, 12.0) == "waiting: no answer for 12.0s, 40 in flight"
    stats.answers, stats.last_answer_at = 40, 20.0
    assert waiting_note(stats, 27.0) == "waiting: no answer for 7.0s, nothing in flight (paced, paused after a 429, or backing off)"
    stats.attempts += 1
    stats.record_answer(20.0, rate_limited=False, took=30.0)  # answers take 30 s: a quiet 20 s is how they are
    assert waiting_note(stats, 40.0) is None
    assert waiting_note(stats, 66.0) == "waiting: no answer for 46.0s, nothing in flight (paced, paused after a 429, or backing off)"
    stats.finished_at = 27.0
    assert waiting_note(stats, 40.0) is None
    stream = io.StringIO()
    stats.finished_at, stats.answers, stats.last_answer_at, stats.attempts = None, 0, None, 40  # an outage from the start
    stats.slowest_answer = 0.0
    display = ProgressDisplay(stats, enabled=True, stream=stream)
    clock.now = 60.0
    display.tick()
    assert "no answer for 1m00s, 40 in flight" in stream.getvalue()
    display.close()


def test_a_resumed_bar_starts_at_what_was_done_and_its_rate_and_eta_count_only_this_runs_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import tqdm.std

    wall, run_clock = Clock(), Clock()
    monkeypatch.setattr(tqdm.std, "time", wall)  # tqdm's own clock, for its elapsed time and rate
    stats = RunStats(Limits(600, 60_000), started_at=0.0, clock=run_clock)
    stats.total, stats.earlier_rows = 10_000, 8_000
    stream = io.StringIO()
    display = ProgressDisplay(stats, enabled=True, stream=stream)
    assert "resumed, 8,000 done before" in stream.getvalue() and "8000/10000" in stream.getvalue()
    wall.now = run_clock.now = 100.0
    stats.already_done, stats.succeeded = 8_000, 1_000
    display.tick()
    last = drawn_lines(stream.getvalue())[-2]  # the bar; under it, the pace and the counts
    assert "9000/10000" in last
    assert "10.00req/s" in last  # 1,000 sent by this run in 100 s (counting the 9,000 would say 90/s)
    assert "01:40<01:40" in last  # and 1,000 left at 10/s
    display.close()


def test_without_a_bar_the_display_prints_a_status_line_each_interval_and_on_a_terminal_only_after_trouble() -> None:
    clock = Clock()
    stats = RunStats(Limits(600, 60_000), started_at=0.0, clock=clock)
    lines_out = io.StringIO()
    lines = ProgressDisplay(stats, enabled=False, status_interval=30.0, stream=lines_out)
    bar_out = io.StringIO()
    bar = ProgressDisplay(stats, enabled=True, status_interval=30.0, stream=bar_out)
    for now in (10.0, 20.0, 30.0):  # a calm interval
        clock.now = now
        stats.succeeded = stats.attempts = stats.answers = int(now * 10)
        stats.last_answer_at = now
        lines.tick()
        bar.tick()
    assert lines_out.getvalue().count("done") == 1 and "300 done;" in lines_out.getvalue()
    assert "last 30.0s" not in bar_out.getvalue()
    clock.now, stats.retries = 60.0, 3
    lines.tick()
    bar.tick()
    assert lines_out.getvalue().count("done") == 2
    assert "last 30.0s: 3 retries" in bar_out.getvalue()
    lines.close()
    bar.close()


def test_describe_pace_names_where_each_limit_came_from() -> None:
    assert describe_pace(580, 42_000, Limits(600, 60_000), Limits(600, 60_000)) == "580 of 600 RPM, 42,000 of 60,000 TPM (limits given)"
    assert describe_pace(580, 42_000, Limits(600, 60_000), Limits(None, None)) == "580 of 600 RPM, 42,000 of 60,000 TPM (limits learned)"
    assert describe_pace(580, 42_000, Limits(500, math.inf), Limits(900, None)) == "580 of 500 RPM, 42,000 TPM (no limit) (RPM limit learned)"


def test_summary_record_holds_the_summary_as_data_with_the_exit_code() -> None:
    stats = finished_stats(succeeded=900, failed=7, invalid=3, attempts=1_000, retries=93, rate_limit_errors=5, tokens_charged=100_000)
    stats.total, stats.already_done = 1_000, 90
    stats.limits = Limits(500, 60_000)  # the API said 500 RPM; 60,000 TPM was given
    record = summary_record(stats, exit_code=1, exit_meaning="some failed", given=Limits(600, 60_000), headroom=0.9, save_path="out.jsonl")
    assert json.loads(json.dumps(record, allow_nan=False)) == record  # plain JSON, no NaN or Infinity
    expected = {
        "exit_code": 1, "exit_meaning": "some failed", "stop_reason": None, "error": None, "total": 1_000, "already_done": 90,
        "succeeded": 900, "failed": 7, "invalid": 3, "not_finished": 0, "attempts": 1_000, "retries": 93, "rate_limit_429s": 5,
        "elapsed_s": 120.0, "results_file": "out.jsonl",
    }
    assert {key: record[key] for key in expected} == expected
    assert record["limits"] == {
        "given": {"requests_per_minute": 600, "tokens_per_minute": 60_000},
        "used": {"requests_per_minute": 500, "tokens_per_minute": 60_000},
        "learned": {"requests_per_minute": 500, "tokens_per_minute": None},
        "headroom": 0.9,
    }
    refused = summary_record(None, exit_code=2, exit_meaning="usage error", given=Limits(None, None), error="--request_url: no scheme")
    assert (refused["exit_code"], refused["error"], refused["succeeded"], refused["attempts"]) == (2, "--request_url: no scheme", 0, 0)
    assert refused["elapsed_s"] == 0.0
