"""The processor end to end: real HTTP over loopback against the project's mock API."""

from __future__ import annotations

import math
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import UNLIMITED, Limits, Processor, RunStopped, Settings, run_file_job
from rate_limited_processor.endpoints import endpoint_from_url
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.mock_server.record import request_key
from rate_limited_processor.mock_server.responses import response_matches
from rate_limited_processor.retry_policy import RetryPolicy

from tests.helpers import FAST_RETRY, chat_request, embedding_request, read_rows, write_jsonl


def body_of(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k != "metadata"}


def assert_every_line_exactly_once(requests: list[dict[str, Any]], rows: list[list[Any]], url: str) -> None:
    """One row per request, each holding that request's own response."""
    endpoint = endpoint_from_url(url)
    by_id = {request["metadata"]["id"]: request for request in requests}
    ids = Counter(row[2]["id"] for row in rows)
    assert ids == Counter(by_id.keys()), "every request exactly once"
    for request_body, response, metadata in rows:
        assert request_body == body_of(by_id[metadata["id"]])
        assert isinstance(response, dict), f"request {metadata['id']} failed: {response}"
        assert response_matches(endpoint, request_body, response)


# -- under a strict limit ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, make_request, limits",
    [
        # RPM binds: ~45 tokens per chat request, 30,000 RPM = 500/s, TPM loose.
        ("chat/completions", chat_request, Limits(requests_per_minute=30_000, tokens_per_minute=3_000_000)),
        # TPM binds: ~12 tokens per embedding, 300,000 TPM = 5,000 tok/s = ~400 requests/s.
        ("embeddings", embedding_request, Limits(requests_per_minute=120_000, tokens_per_minute=300_000)),
    ],
)
async def test_a_large_file_under_a_strict_limit_arrives_exactly_once(tmp_path: Path, endpoint: str, make_request: Any, limits: Limits) -> None:
    requests = [make_request(i) for i in range(2_000)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    mock = MockConfig(requests_per_minute=limits.requests_per_minute, tokens_per_minute=limits.tokens_per_minute, burst_seconds=1.0)
    async with MockServer(mock) as server:
        url = server.url(endpoint)
        settings = Settings(request_url=url, limits=limits, retry=FAST_RETRY, request_timeout=10)
        stats = await run_file_job(settings, input_path, output_path, show_progress=False)
        served = server.record

    assert_every_line_exactly_once(requests, read_rows(output_path), url)
    assert (stats.succeeded, stats.failed, stats.invalid) == (2_000, 0, 0)
    assert set(served.served_ok_keys().values()) == {1}
    assert sum(served.served_ok_keys().values()) == 2_000
    assert served.count(429) <= 20, f"429s on more than 1% of requests: {served.counts()}"
    assert stats.rate_limit_errors == served.count(429)


# -- faults --------------------------------------------------------------------------------------------


async def test_injected_faults_are_retried_until_every_request_succeeds(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(300)]
    faults = {"500": 0.05, "503": 0.05, "reset": 0.05, "hang": 0.03, "html_502": 0.05}
    async with MockServer(MockConfig(faults=faults, seed=7)) as server:
        settings = Settings(
            request_url=server.url("chat/completions"),
            limits=UNLIMITED,
            retry=RetryPolicy(max_attempts=8, initial_delay=0.01, max_delay=0.05),
            request_timeout=0.5,  # a hung connection costs half a second, not the run
        )
        processor = Processor(settings)
        results = [result async for result in processor.process(requests)]
        counts = server.record.counts()

    assert len(results) == 300 and all(result.succeeded for result in results)
    for kind in (500, 503, 502, "reset", "hang"):
        assert counts[kind] > 0, f"fault {kind} was never injected: {counts}"
    retried = [result for result in results if result.attempts > 1]
    assert processor.stats.retries == sum(result.attempts - 1 for result in results) > 0
    # A success after failures still records the failures it survived in the stats, not in the row.
    assert all(result.errors for result in retried)


async def test_a_400_is_recorded_after_one_attempt(tmp_path: Path) -> None:
    bad = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 500, "max_tokens": 1}
    async with MockServer() as server:
        settings = Settings(request_url=server.url("chat/completions"), limits=UNLIMITED, retry=FAST_RETRY)
        results = [result async for result in Processor(settings).process([bad, chat_request(1)])]
        assert server.record.count(400) == 1
    by_index = {result.index: result for result in results}
    assert by_index[1].attempts == 1 and not by_index[1].succeeded
    assert by_index[1].errors[0].startswith("HTTP 400") and "'n'" in by_index[1].errors[0]
    assert by_index[2].succeeded


@pytest.mark.parametrize(
    "mock, expected",
    [
        (MockConfig(api_key="sk-the-right-key"), "HTTP 401"),
        (MockConfig(faults={"insufficient_quota": 1.0}, faults_after=40), "insufficient_quota"),
    ],
)
async def test_errors_that_fail_every_request_stop_the_run(tmp_path: Path, mock: MockConfig, expected: str) -> None:
    requests = [chat_request(i) for i in range(500)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    async with MockServer(mock) as server:
        settings = Settings(
            request_url=server.url("chat/completions"), api_key="sk-a-wrong-key", limits=Limits(6_000, math.inf),
            retry=FAST_RETRY, max_in_flight=5,
        )
        stats = await run_file_job(settings, input_path, output_path, show_progress=False)
        sent = len(server.record)

    assert stats.stop_reason is not None and expected in stats.stop_reason
    assert sent < 100, "dispatch stopped at once"
    rows = read_rows(output_path)
    # Only real results are written; what was not attempted is left for a rerun.
    assert all(isinstance(row[1], dict) for row in rows)
    assert len(rows) == stats.succeeded < 500
    assert stats.failed == 0


# -- the 429 pause ----------------------------------------------------------------------------------------


async def test_after_a_429_the_mock_admits_nothing_during_the_pause() -> None:
    # The mock allows 1 request per second; the client is told 100 per second, and (no x-ratelimit
    # headers, as behind a gateway) cannot learn better: it will be rate limited.
    async with MockServer(MockConfig(requests_per_minute=60, burst_seconds=1.0, ratelimit_headers=False)) as server:
        settings = Settings(
            request_url=server.url("embeddings"), limits=Limits(requests_per_minute=6_000, tokens_per_minute=math.inf),
            retry=RetryPolicy(max_attempts=20, initial_delay=0.01, max_delay=0.05), max_in_flight=50,
        )
        results = [result async for result in Processor(settings).process([embedding_request(i) for i in range(4)])]
        entries = list(server.record)

    assert all(result.succeeded for result in results)
    rejections = [entry for entry in entries if entry.outcome == 429]
    assert rejections, "the test needs at least one 429"
    slack = 0.05  # requests already on the wire when the 429 left the server
    for rejection in rejections:
        assert rejection.retry_after is not None and rejection.retry_after > 0.2
        during_pause = [
            entry for entry in entries
            if rejection.arrived_at + slack < entry.arrived_at < rejection.arrived_at + rejection.retry_after - slack
        ]
        assert during_pause == [], f"requests arrived during a {rejection.retry_after:.2f}s pause"
    # Without the pause, a client told 100/s would have drawn a 429 on nearly every send.
    assert len(rejections) <= 2 * len(results)


# -- bad input ------------------------------------------------------------------------------------------


async def test_malformed_lines_are_recorded_with_their_line_numbers_and_the_rest_processed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [
        chat_request(1),
        "{not json",
        chat_request(3),
        "[1, 2, 3]",
        {"model": "gpt-4o-mini", "metadata": {"id": 5}},  # no messages
        "",
        chat_request(7),
    ]
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)
    output_path = tmp_path / "results.jsonl"
    async with MockServer() as server:
        settings = Settings(request_url=server.url("chat/completions"), limits=UNLIMITED, retry=FAST_RETRY)
        with caplog.at_level(logging.ERROR, logger="rate_limited_processor"):
            stats = await run_file_job(settings, input_path, output_path, show_progress=False)
        assert len(server.record) == 3  # only the good lines were sent

    rows = read_rows(output_path)
    assert len(rows) == 6
    errors = sorted(row[1][0] for row in rows if isinstance(row[1], list))
    assert errors[0].startswith("line 2: not valid JSON")
    assert errors[1:] == ["line 4: expected a JSON object, got list", "line 5: missing required field 'messages' for /chat/completions"]
    assert (stats.succeeded, stats.invalid) == (3, 3)
    for reason in ("line 2", "line 4", "line 5"):
        assert reason in caplog.text


# -- library use ----------------------------------------------------------------------------------------


async def test_library_takes_an_async_iterable_and_yields_results_without_files() -> None:
    async def generate() -> Any:
        for i in range(50):
            yield embedding_request(i)

    async with MockServer() as server:
        settings = Settings(request_url=server.url("embeddings"), limits=UNLIMITED)
        results = [result async for result in Processor(settings).process(generate())]
    assert sorted(result.metadata["id"] for result in results) == list(range(50))
    assert all(result.attempts == 1 and result.response and result.response["data"] for result in results)
    assert all(request_key(result.request) for result in results)


async def test_run_stopped_is_raised_to_library_users_after_the_last_result() -> None:
    async with MockServer(MockConfig(api_key="sk-right")) as server:
        settings = Settings(request_url=server.url("embeddings"), api_key="sk-wrong", limits=UNLIMITED)
        processor = Processor(settings)
        with pytest.raises(RunStopped, match="401"):
            async for _ in processor.process([embedding_request(i) for i in range(10)]):
                pass
    assert processor.stats.unfinished >= 1
