"""Limits learned from the API: header parsing and the tuner (pure), then whole runs against the mock."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import UNLIMITED, Limits, RetryPolicy, Settings, run_file_job
from rate_limited_processor.core.learned_limits import (
    LimitTuner,
    RateLimitReport,
    SendMark,
    parse_rate_limit_headers,
    states_rate_limits,
)
from rate_limited_processor.core.limiter import TokenBucket
from rate_limited_processor.mock_server import MockApi, MockConfig, MockRequest, MockTransport
from tests.helpers import chat_request, mock_url, write_jsonl
from tests.virtual_time import run_virtual, virtual_time

RETRY = RetryPolicy(max_attempts=10, initial_delay=0.05, max_delay=0.5, rate_limit_cooldown=1.0)
NO_HEADERS = RateLimitReport()


def waiting(tuner: LimitTuner) -> bool:
    """Whether the first request still goes alone (a call, so a type checker does not pin the answer)."""
    return tuner.awaiting_first_answer

# -- headers ------------------------------------------------------------------------------------------


def test_openai_headers_with_go_durations() -> None:
    report = parse_rate_limit_headers({
        "x-ratelimit-limit-requests": "5000", "x-ratelimit-limit-tokens": "2000000",
        "x-ratelimit-remaining-requests": "4999", "x-ratelimit-reset-requests": "12ms", "x-ratelimit-reset-tokens": "6m0s",
    })
    assert report == RateLimitReport(limit_requests=5000, limit_tokens=2_000_000, reset_requests=0.012, reset_tokens=360.0, remaining_requests=4999)


def test_azure_headers_with_bare_seconds_and_nonsense_ignored() -> None:
    report = parse_rate_limit_headers({"x-ratelimit-reset-requests": "10", "x-ratelimit-limit-tokens": "lots", "x-ratelimit-limit-requests": "-3"})
    ignored = (("x-ratelimit-limit-requests", "-3"), ("x-ratelimit-limit-tokens", "lots"))  # named, for the warning
    assert report == RateLimitReport(reset_requests=10.0, reset_resolution=1.0, ignored=ignored)  # whole seconds: coarse
    assert parse_rate_limit_headers({}).empty


def test_one_rate_limit_header_among_many_is_read_and_none_reports_nothing() -> None:
    plain = {"content-type": "application/json", "content-length": "337", "x-request-id": "req_1", "server": "gateway"}
    assert parse_rate_limit_headers(plain) == NO_HEADERS
    assert parse_rate_limit_headers({**plain, "x-ratelimit-limit-tokens": "90000"}) == RateLimitReport(limit_tokens=90_000)
    assert parse_rate_limit_headers({**plain, "anthropic-ratelimit-requests-limit": "50"}).limit_requests == 50


def test_every_header_the_parser_reads_lets_it_read_them() -> None:
    """`states_rate_limits` lists the names apart from the parser: a name read but not listed would be skipped."""

    asked: set[str] = set()

    class Recording(dict[str, str]):
        def get(self, name: str, default: Any = None) -> Any:
            asked.add(name)
            return super().get(name, default)

    for headers in ({"x-ratelimit-limit-requests": "60"}, {"anthropic-ratelimit-requests-limit": "50"}):
        parse_rate_limit_headers(Recording(headers))
    assert len(asked) >= 9 and all(states_rate_limits({name: "1"}) for name in asked)


# -- the tuner ----------------------------------------------------------------------------------------


def test_learned_limits_are_adopted_the_lower_wins_and_headroom_applies() -> None:
    tuner = LimitTuner(Limits(requests_per_minute=1_000, tokens_per_minute=None), headroom=0.9)
    assert waiting(tuner)  # the token limit is unknown: the first request goes alone
    tuner.observe(SendMark(0.0, 1, 100), RateLimitReport(limit_requests=5_000, limit_tokens=200_000))
    assert not tuner.awaiting_first_answer
    assert tuner.server_limits() == Limits(1_000, 200_000)
    assert tuner.limits().requests_per_minute == pytest.approx(900)
    assert tuner.limits().tokens_per_minute == pytest.approx(180_000)


def test_given_limits_need_no_first_answer_and_unknown_ones_are_unlimited_without_headers() -> None:
    assert not LimitTuner(Limits(100, 1_000)).awaiting_first_answer
    tuner = LimitTuner(Limits(None, None))
    tuner.observe(SendMark(0.0, 1, 10), NO_HEADERS)  # a server that states no limit
    assert tuner.limits() == UNLIMITED


def feed(
    tuner: LimitTuner,
    *,
    ours_per_second: float,
    server_per_second: float,
    others_per_second: float,
    factor: float,
    seconds: float,
    capacity: float,
    step: float = 0.02,
    start: float = 0.0,
) -> None:
    """Open loop: we send `ours_per_second` tokens; the server charges factor x that plus other traffic
    against a bucket refilling at `server_per_second`, and reports its reset after each of our requests."""
    bucket = TokenBucket(server_per_second, capacity, now=start)
    ours = 0.0
    t = start
    while t < start + seconds:
        t += step
        ours += ours_per_second * step
        bucket.take((ours_per_second * factor + others_per_second) * step, now=t)
        bucket.refill(t)
        reset = max(0.0, bucket.capacity - bucket.level) / bucket.rate
        tuner.observe(SendMark(t, int(t / step), int(ours)), RateLimitReport(limit_tokens=server_per_second * 60, reset_tokens=round(reset, 3)))


def test_the_ratio_learns_a_server_that_counts_more_than_we_estimate() -> None:
    tuner = LimitTuner(Limits(None, None))
    feed(tuner, ours_per_second=1_000, server_per_second=1_000, others_per_second=0, factor=1.5, seconds=10, capacity=1_000)
    assert tuner.tokens.ratio == pytest.approx(1.5, rel=0.03)
    assert tuner.limits().tokens_per_minute == pytest.approx(60_000 / 1.5, rel=0.03)


def test_the_ratio_learns_another_program_spending_the_same_account() -> None:
    tuner = LimitTuner(Limits(None, None))
    feed(tuner, ours_per_second=800, server_per_second=1_000, others_per_second=400, factor=1.0, seconds=10, capacity=1_000)
    assert tuner.tokens.ratio == pytest.approx(1.5, rel=0.03)  # (800 + 400) / 800


def test_a_server_with_slack_teaches_nothing_false_and_an_old_ratio_relaxes() -> None:
    # Consumption below the refill: the server's bucket sits near full, where refill is clipped and a
    # naive difference would read consumption as far higher than it is.
    tuner = LimitTuner(Limits(None, None))
    feed(tuner, ours_per_second=500, server_per_second=1_000, others_per_second=0, factor=1.2, seconds=10, capacity=1_000)
    assert tuner.tokens.ratio == pytest.approx(1.0, abs=0.01)
    tuner.tokens.ratio = 2.0  # as after a competitor that has since stopped
    feed(tuner, ours_per_second=500, server_per_second=1_000, others_per_second=0, factor=1.0, seconds=20, capacity=1_000, start=10.0)
    assert tuner.tokens.ratio < 1.01


def padded_request(i: int) -> dict[str, Any]:
    """Whitespace-heavy text: characters / 4 (the mock's count, like OpenAI's) is far above tiktoken's."""
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"row {i}:" + " " * 120 + "end"}], "max_tokens": 20, "metadata": {"id": i}}


def timed_run(api: MockApi, settings: Settings, requests: list[dict[str, Any]], tmp_path: Path, *, alongside: Any = None) -> tuple[float, Any]:
    """Run the file job against `api` in virtual time (with `alongside()` running too); its elapsed seconds and stats."""
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)

    async def main() -> tuple[float, Any]:
        other = asyncio.create_task(alongside()) if alongside is not None else None
        if other is not None:
            await asyncio.sleep(1.0)
        started = virtual_time()
        stats = await run_file_job(settings, input_path, tmp_path / "results.jsonl", show_progress=False, transport=MockTransport(api))
        elapsed = virtual_time() - started
        if other is not None:
            other.cancel()
        return elapsed, stats

    return run_virtual(main())


def test_untold_limits_and_a_server_counting_characters_finish_near_the_ideal(tmp_path: Path) -> None:
    api = MockApi(MockConfig(requests_per_minute=6_000, tokens_per_minute=120_000, token_counting="chars", latency=0.05))
    n = 600
    settings = Settings(request_url=mock_url(), retry=RETRY)  # limits: auto
    elapsed, stats = timed_run(api, settings, [padded_request(i) for i in range(n)], tmp_path)
    charged = sum(entry.tokens for entry in api.record if entry.outcome == 200)
    rejected = api.record.count(429)
    assert stats.succeeded == n
    ideal = max(n / 100, charged / 2_000)  # seconds at 6,000 RPM and 120,000 TPM, in the server's count
    assert charged > 1.3 * stats.estimated_tokens_succeeded, "the test needs a server counting more than we do"
    assert elapsed <= 1.10 * ideal, f"{elapsed:.1f}s against an ideal of {ideal:.1f}s"
    assert rejected <= 0.02 * n
    assert stats.server_token_ratio > 1.3


def test_another_program_on_the_same_account_slows_this_one_instead_of_causing_429s(tmp_path: Path) -> None:
    api = MockApi(MockConfig(requests_per_minute=3_000, tokens_per_minute=10_000_000, latency=0.05))

    async def other_program() -> None:  # 900 RPM of the account's 3,000, not under our control
        for i in itertools.count():
            body = {key: value for key, value in chat_request(10**6 + i).items() if key != "metadata"}
            await api.answer(MockRequest("/v1/chat/completions", json.dumps(body).encode()))
            await asyncio.sleep(60 / 900)

    settings = Settings(request_url=mock_url(), retry=RETRY)
    elapsed, stats = timed_run(api, settings, [chat_request(i) for i in range(600)], tmp_path, alongside=other_program)
    rejected = api.record.count(429)
    assert stats.succeeded == 600
    assert rejected <= 0.02 * 600, f"{rejected} 429s"
    # The account's budget is used: our 600 took about as long as the 2,100 RPM left to us allows.
    assert elapsed <= 1.15 * 600 / (2_100 / 60)
    assert stats.limits.requests_per_minute == 3_000


def test_behind_a_gateway_without_headers_a_wrong_given_limit_costs_little(tmp_path: Path) -> None:
    api = MockApi(MockConfig(requests_per_minute=3_000, tokens_per_minute=10_000_000, ratelimit_headers=False, latency=0.05))
    settings = Settings(request_url=mock_url(), limits=Limits(6_000, math.inf), retry=RETRY)  # twice too high
    elapsed, stats = timed_run(api, settings, [chat_request(i) for i in range(600)], tmp_path)
    rejected = api.record.count(429)
    assert stats.succeeded == 600 and stats.failed == 0
    assert rejected <= 0.05 * 600, f"{rejected} 429s"
    assert elapsed <= 1.25 * 600 / 50  # 3,000 RPM is 50 a second


def test_a_given_limit_below_the_servers_is_measured_against_the_servers_refill() -> None:
    # Given 30,000 TPM on a 60,000 TPM account: the server refills at 60,000, and measuring at 30,000
    # would read the ratio as half of what it is and send at twice the given limit.
    tuner = LimitTuner(Limits(None, 30_000))
    feed(tuner, ours_per_second=500, server_per_second=1_000, others_per_second=700, factor=1.0, seconds=10, capacity=1_000)
    assert tuner.tokens.ratio == pytest.approx(2.4, rel=0.05)  # (500 + 700) / 500
    assert (tuner.limits().tokens_per_minute or math.inf) <= 30_000


def test_an_error_without_headers_does_not_open_the_first_request_gate() -> None:
    tuner = LimitTuner(Limits(None, None))
    tuner.observe(SendMark(0.0, 1, 10), NO_HEADERS, from_the_api=False)  # a gateway's 502
    assert waiting(tuner)
    tuner.observe(SendMark(0.2, 2, 20), NO_HEADERS)  # the API's own answer, even without limits
    assert not tuner.awaiting_first_answer


def test_a_server_that_reports_a_full_bucket_lets_a_high_ratio_relax() -> None:
    tuner = LimitTuner(Limits(None, None))
    tuner.tokens.ratio = 2.5
    for i in range(1, 200):  # 0s resets, as Azure sends for a full bucket
        tuner.observe(SendMark(i * 0.1, i, i * 10), RateLimitReport(limit_tokens=60_000, reset_tokens=0.0, reset_resolution=1.0))
    assert tuner.tokens.ratio < 1.01


# -- Anthropic's headers -----------------------------------------------------------------------------------


def test_anthropic_headers_state_three_limits_and_resets_as_rfc_3339_times() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "3999",
        "anthropic-ratelimit-requests-reset": "2026-12-01T10:00:01Z",
        "anthropic-ratelimit-input-tokens-limit": "200000",
        "anthropic-ratelimit-input-tokens-reset": "2026-12-01T10:00:03+00:00",
        "anthropic-ratelimit-output-tokens-limit": "8000",
        "anthropic-ratelimit-output-tokens-reset": "not a time",
    }
    now = 1_796_119_200.0  # 2026-12-01T10:00:00Z
    report = parse_rate_limit_headers(headers, now=now)
    assert (report.limit_requests, report.limit_tokens, report.limit_output_tokens) == (4_000, 200_000, 8_000)
    assert report.reset_requests == pytest.approx(1.0) and report.reset_tokens == pytest.approx(3.0)
    assert report.reset_resolution == 1.0  # whole seconds
    tuner = LimitTuner(Limits(None, None), output_limit=True)
    assert tuner.awaiting_first_answer
    tuner.observe(SendMark(now, 1, 10), report)
    assert tuner.limits() == Limits(4_000, 200_000, output_tokens_per_minute=8_000)
    assert not tuner.awaiting_first_answer


def test_an_api_without_an_output_limit_has_no_output_bucket() -> None:
    tuner = LimitTuner(Limits(600, 60_000))
    assert tuner.limits().output_tokens_per_minute is None
    assert not tuner.awaiting_first_answer  # and nothing to wait for
