"""What crosses a real socket: the aiohttp transport against the mock on loopback, kept few and small.

Everything above the wire is tested in virtual time (test_runner.py). These check what only a socket can
show: real resets, hangs and HTML pages, connection refused, and pacing that holds on a real clock.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from rate_limited_processor import Limits, NoAnswer, Processor, RetryPolicy, Settings, TransportError, TransportRequest, run_file_job
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.transport.http import AiohttpTransport
from tests.helpers import chat_request, read_rows, unused_port, write_jsonl


async def test_a_file_under_a_strict_limit_arrives_exactly_once_over_real_http(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(600)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    limits = Limits(requests_per_minute=36_000, tokens_per_minute=3_000_000)  # 600/s: about a second
    async with MockServer(MockConfig(requests_per_minute=36_000, tokens_per_minute=3_000_000)) as server:
        settings = Settings(request_url=server.url("chat/completions"), limits=limits, request_timeout=10)
        stats = await run_file_job(settings, input_path, output_path, show_progress=False)
        served = server.record
    rows = read_rows(output_path)
    assert Counter(row[2]["id"] for row in rows) == Counter(range(600))
    assert all(isinstance(row[1], dict) for row in rows)
    assert set(served.served_ok_keys().values()) == {1} and stats.succeeded == 600
    assert served.count(429) <= 6, f"429s on more than 1% of requests: {served.counts()}"
    assert stats.rate_limit_errors == served.count(429)


async def test_real_resets_hangs_and_html_pages_are_retried_until_every_request_succeeds() -> None:
    faults = {"500": 0.05, "reset": 0.08, "hang": 0.03, "html_502": 0.05}
    async with MockServer(MockConfig(faults=faults, seed=7)) as server:
        settings = Settings(
            request_url=server.url("chat/completions"),
            retry=RetryPolicy(max_attempts=8, initial_delay=0.01, max_delay=0.05),
            request_timeout=0.5,  # a hung connection costs half a second, not the run
        )
        processor = Processor(settings)
        results = [result async for result in processor.process([chat_request(i) for i in range(150)])]
        counts = server.record.counts()
    assert len(results) == 150 and all(result.succeeded for result in results)
    for kind in (500, 502, "reset", "hang"):
        assert counts[kind] > 0, f"fault {kind} was never injected: {counts}"
    errors = [error for result in results for error in result.errors]
    assert any(error.startswith("TimeoutError") for error in errors)
    assert any("non-JSON body" in error for error in errors)


async def test_the_aiohttp_transport_says_why_no_answer_came() -> None:
    transport = AiohttpTransport()
    try:
        with pytest.raises(TransportError) as refused:
            await transport.send(TransportRequest(f"http://127.0.0.1:{unused_port()}/v1/embeddings", {"input": "x"}, timeout=5))
        assert refused.value.kind is NoAnswer.CONNECT and refused.value.kind.about_the_endpoint
        async with MockServer(MockConfig(faults={"reset": 1.0})) as server:
            with pytest.raises(TransportError) as reset:
                await transport.send(TransportRequest(server.url("embeddings"), {"input": "x"}, timeout=5))
        assert reset.value.kind is NoAnswer.BROKEN and not reset.value.kind.about_the_endpoint
    finally:
        await transport.aclose()
