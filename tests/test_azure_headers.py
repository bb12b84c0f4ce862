"""Azure's rate-limit headers of -1 and 0: the server saying it does not know the limit (seen on Azure OpenAI's
Responses API: `x-ratelimit-limit-tokens: -1`, `x-ratelimit-remaining-tokens: -1`, `x-ratelimit-reset-tokens: 0`).
No limit is learned from them, none of them counts as an empty bucket, and nothing is warned.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Limits, Settings, TransportRequest, TransportResponse, json_response, run_file_job
from rate_limited_processor.core.learned_limits import LimitTuner, SendMark, parse_rate_limit_headers
from rate_limited_processor.providers.rate_limits import RateLimitReport
from tests.helpers import write_jsonl
from tests.virtual_time import run_virtual, virtual_time

AZURE_URL = "https://res.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21"
#: What Azure sent when it did not know (as reported against openai-dotnet), both ways it says so.
UNKNOWN = {
    "x-ratelimit-limit-tokens": "-1", "x-ratelimit-remaining-tokens": "-1", "x-ratelimit-reset-tokens": "0",
    "x-ratelimit-limit-requests": "0", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "0",
}


def test_minus_one_and_zero_limits_are_unknown_not_limits_nor_empty_buckets() -> None:
    report = parse_rate_limit_headers(UNKNOWN)
    assert report == RateLimitReport(unknown=("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"))
    assert report.empty and not report.exhausted and report.ignored == ()
    # A real limit beside an unknown one is read as before, its remaining and reset too.
    mixed = parse_rate_limit_headers({**UNKNOWN, "x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6"})
    assert (mixed.limit_requests, mixed.remaining_requests, mixed.reset_requests, mixed.exhausted) == (600.0, 0.0, 6.0, True)
    assert (mixed.limit_tokens, mixed.remaining_tokens, mixed.reset_tokens, mixed.unknown) == (None, None, None, ("x-ratelimit-limit-tokens",))
    # Other nonsense is still nonsense, and still warned about.
    assert parse_rate_limit_headers({"x-ratelimit-limit-requests": "-60"}).ignored == (("x-ratelimit-limit-requests", "-60"),)


def test_a_limit_learned_before_stays_when_later_answers_say_they_do_not_know() -> None:
    heard: list[str] = []
    tuner = LimitTuner(None, warn=heard.append)
    tuner.observe(SendMark(0.0, 1, 10), parse_rate_limit_headers({"x-ratelimit-limit-requests": "600", "x-ratelimit-limit-tokens": "150000"}))
    for i in range(1, 20):
        tuner.observe(SendMark(float(i), i + 1, 10 * (i + 1)), parse_rate_limit_headers(UNKNOWN))
    limits = tuner.limits()
    assert (limits.requests_per_minute, limits.tokens_per_minute, heard) == (600.0, 150_000.0, [])


@pytest.mark.parametrize("given", [Limits(None, None), Limits(120, None)], ids=["limits auto", "told 120 RPM"])
def test_a_run_against_unknown_headers_goes_on_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, given: Limits) -> None:
    def server(request: TransportRequest) -> TransportResponse:
        answer: dict[str, Any] = {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
        return json_response(answer, headers=UNKNOWN)

    n = 40
    lines = [{"messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 5, "metadata": {"id": i}} for i in range(n)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)

    async def main() -> tuple[Any, float]:
        started = virtual_time()
        settings = Settings(request_url=AZURE_URL, api_key="k", limits=given)
        stats = await run_file_job(settings, input_path, tmp_path / "out.jsonl", show_progress=False, transport=server)
        return stats, virtual_time() - started

    with caplog.at_level(logging.DEBUG, logger="rate_limited_processor"):
        stats, elapsed = run_virtual(main())
    assert stats.succeeded == n
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    unknown = [record for record in caplog.records if "does not know that limit" in record.getMessage()]
    assert len(unknown) == 2 and all(record.levelno == logging.DEBUG for record in unknown)  # once per header, at debug
    assert stats.limits.requests_per_minute == given.requests_per_minute and stats.limits.tokens_per_minute is None
    if given.requests_per_minute is not None:
        assert elapsed >= (n - 2) / (given.requests_per_minute / 60)  # paced at the told limit, not at a learned 0
