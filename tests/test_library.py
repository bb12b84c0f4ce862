"""The library as a newcomer meets it: the command's flag names as Settings' keyword arguments, where results say
they came from, and the virtual clock (`rate_limited_processor.testing`) a user's own tests can run on."""

from __future__ import annotations

import time
from typing import Any

import pytest

from rate_limited_processor import Limits, Processor, Settings, TransportRequest, TransportResponse, json_response
from rate_limited_processor.testing import Deadlock, run_virtual, virtual_time

URL = "http://test/v1/chat/completions"


def test_the_flag_names_work_as_keyword_arguments() -> None:
    settings = Settings(URL, api_key=None, max_attempts=2, max_requests_per_minute=500, max_tokens_per_minute="auto", burst_seconds=2)
    assert settings.retry.max_attempts == 2
    assert settings.limits == Limits(500, None, burst_seconds=2)
    anthropic = Settings(URL, api_key=None, max_input_tokens_per_minute=30_000, max_output_tokens_per_minute=8_000)
    assert anthropic.limits == Limits(None, 30_000, output_tokens_per_minute=8_000)
    # They refine what else was given, and are checked as the flags are.
    assert Settings(URL, api_key=None, limits=Limits(100, 1_000), max_requests_per_minute=50).limits == Limits(50, 1_000)
    for wrong in ({"max_attempts": 0}, {"max_requests_per_minute": 0}, {"max_tokens_per_minute": "lots"}):
        with pytest.raises(ValueError):
            Settings(URL, api_key=None, **wrong)
    with pytest.raises(ValueError, match="not both"):
        Settings(URL, api_key=None, max_tokens_per_minute=1, max_input_tokens_per_minute=1)


def chat(i: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"question {i}"}], "max_tokens": 5}


def test_a_users_test_runs_on_virtual_time_and_results_say_where_they_came_from() -> None:
    """The docstring of rate_limited_processor.testing, as a test: a 2 s retry-after costs no real time."""
    answered: set[int] = set()

    def rate_limited_once(request: TransportRequest) -> TransportResponse:
        number = int(request.body["messages"][0]["content"].split()[-1])
        if number not in answered:
            answered.add(number)
            return json_response({"error": {"type": "requests", "code": "rate_limit_exceeded", "message": "slow down"}},
                                 status=429, headers={"retry-after": "2"})
        return json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]})

    async def main() -> tuple[list[Any], float]:
        started = virtual_time()
        settings = Settings(URL, api_key=None, max_requests_per_minute=6_000, max_tokens_per_minute=10_000_000)
        results = [result async for result in Processor(settings, transport=rate_limited_once).process(chat(i) for i in range(3))]
        return results, virtual_time() - started

    wall = time.monotonic()
    results, elapsed = run_virtual(main())
    assert time.monotonic() - wall < 1.5  # the waits were virtual...
    assert elapsed >= 2.0  # ...and were waited, on the loop's clock
    assert all(result.succeeded for result in results)
    assert sorted((result.index, result.position) for result in results) == [(1, 0), (2, 1), (3, 2)]  # index from 1, position from 0


def test_a_hang_fails_at_once_instead_of_waiting() -> None:
    import asyncio

    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(Deadlock):
        run_virtual(hangs())
