"""Counters, the rate meter and the summary text: pure, on a fake clock."""

from __future__ import annotations

import io

import pytest

from rate_limited_processor.limiter import Limits
from rate_limited_processor.status import ProgressDisplay, RateMeter, RunStats, format_summary


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
    assert "not finished   90 (4 had been started); rerun to send them" in text


def test_record_usage_reads_chat_and_responses_usage_shapes() -> None:
    stats = finished_stats()
    stats.record_usage(50, {"usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
    stats.record_usage(40, {"usage": {"input_tokens": 7, "output_tokens": 3, "total_tokens": 10}})
    stats.record_usage(30, {"no usage": True})
    assert (stats.estimated_tokens_succeeded, stats.reported_prompt_tokens, stats.reported_total_tokens) == (120, 17, 25)


def test_progress_display_shows_done_over_total_with_rates() -> None:
    stream = io.StringIO()
    stats = finished_stats()
    stats.total = 4
    display = ProgressDisplay(stats, enabled=True, stream=stream)
    stats.succeeded = 3
    stats.rate_limit_errors = 2
    display.update()
    display.close()
    out = stream.getvalue()
    assert "3/4" in out and "429s 2" in out


def test_disabled_progress_display_writes_nothing() -> None:
    stream = io.StringIO()
    display = ProgressDisplay(finished_stats(), enabled=False, stream=stream)
    display.update()
    display.close()
    assert stream.getvalue() == ""
