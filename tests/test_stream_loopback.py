"""Streams over real HTTP on loopback: the mock streaming as a server does, a streamed job's report judged
against the server's own record, and servers that break a stream off. (The command itself, with --report
and --report_html, runs in `test_report_browser.py`.)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web

from rate_limited_processor import Limits, NoAnswer, Settings, TransportError, TransportRequest, run_file_job
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.mock_server.anthropic import message_payload
from rate_limited_processor.mock_server.record import CUT, request_key
from rate_limited_processor.mock_server.responses import success_payload
from rate_limited_processor.providers.endpoints import Endpoint
from rate_limited_processor.transport.http import AiohttpTransport
from rate_limited_processor.transport.streaming import streamed_body
from rate_limited_processor.ui.report import RunReport
from tests.helpers import FAST_RETRY, chat_request, nearest_rank, read_rows, served_stream_times, write_jsonl


def close_enough(reported: float, served: float) -> bool:
    """The issue's bound: within 10%, or 15 ms."""
    return abs(reported - served) <= max(0.10 * served, 0.015)


async def test_the_transport_times_a_real_stream_as_the_server_sent_it() -> None:
    body = streamed_body(Endpoint.CHAT_COMPLETIONS, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "count to twenty, please"}]})
    async with MockServer(MockConfig(latency=0.02, time_to_first_token=0.08, inter_token_gap=0.01)) as server:
        transport = AiohttpTransport()
        try:
            response = await transport.send(TransportRequest(server.url("chat/completions"), body, stream=True))
        finally:
            await transport.aclose()
        [served] = server.record.entries
    assert json.loads(response.body) == success_payload(Endpoint.CHAT_COMPLETIONS, body, model="gpt-4o-mini", key=request_key(body))
    timings = response.timings
    assert timings is not None and served.first_token_at is not None and served.finished_at is not None
    assert len(timings.tokens) == len(served.token_times) == 8  # "echo: count to twenty, please": 29 characters
    # The client's clock started at its send, a little before the server's arrival; the same loop clock.
    ttft, served_ttft = timings.tokens[0], served.first_token_at - served.arrived_at
    assert served_ttft <= ttft <= served_ttft + 0.015
    assert abs(timings.last_byte - (served.finished_at - served.arrived_at)) <= 0.015
    assert all(later >= earlier for earlier, later in zip(timings.tokens, timings.tokens[1:], strict=False))


async def test_the_transport_reads_a_real_claude_stream_into_its_message() -> None:
    key = "sk-ant-api03-loopback-0123456789"
    body = streamed_body(Endpoint.MESSAGES, {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]})
    async with MockServer(MockConfig(api_key=key, output_tokens=5, latency=0.01, time_to_first_token=0.03, inter_token_gap=0.005)) as server:
        transport = AiohttpTransport()
        try:
            request = TransportRequest(server.url("messages"), body, {"x-api-key": key, "anthropic-version": "2023-06-01"}, stream=True)
            response = await transport.send(request)
        finally:
            await transport.aclose()
        [served] = server.record.entries
    assert response.headers["content-type"].startswith("text/event-stream")
    assert json.loads(response.body) == message_payload(body, model="claude-x", key=request_key(body), input_tokens=0, output_tokens=5)
    assert response.timings is not None and len(response.timings.tokens) == len(served.token_times) == 6  # "echo echo echo echo echo"


async def test_a_streamed_job_over_loopback_reports_percentiles_matching_the_servers_record(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(60)]
    requests_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    save_path = tmp_path / "results.jsonl"
    config = MockConfig(latency=0.01, latency_jitter=0.08, time_to_first_token=0.05, inter_token_gap=0.004, faults={"stream_cut": 0.1}, seed=4)
    settings = Settings(
        request_url="", api_key=None, limits=Limits(6_000, 10_000_000), retry=FAST_RETRY, stream=True, arrivals="poisson", request_rate=100.0,
    )
    report = RunReport(streamed=True)
    async with MockServer(config) as server:
        settings = replace(settings, request_url=server.url("chat/completions"))
        stats = await run_file_job(settings, requests_path, save_path, show_progress=False, benchmark=report)
        record = server.record
    assert stats.succeeded == 60 and record.count(CUT) > 0  # streams were cut, and sent again
    rows = read_rows(save_path)
    assert sorted(row[2]["id"] for row in rows) == list(range(60))  # every line once
    for request, response, _ in rows:  # each answer what the server streamed
        body = streamed_body(Endpoint.CHAT_COMPLETIONS, request)
        assert response == success_payload(Endpoint.CHAT_COMPLETIONS, body, model="gpt-4o-mini", key=request_key(body))
    built = report.build(stats)
    assert built["requests"] == built["succeeded"] == 60
    assert built["errors_by_status"] == {"broken": record.count(CUT)}
    ttfts, latencies = served_stream_times(record)
    for name, served in (("ttft_s", ttfts), ("latency_s", latencies)):
        for percent in (50, 95):
            assert close_enough(built[name][f"p{percent}"], nearest_rank(served, percent)), (name, percent, built[name], nearest_rank(served, percent))


async def test_a_stream_broken_off_or_ended_early_is_no_answer() -> None:
    head = b'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "half"}}]}\n\n'

    async def reset(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(head)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # the connection breaks mid-stream
        return response

    async def ended(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        await response.write(head)
        await response.write_eof()  # a proper end of the body, but no [DONE]
        return response

    async def trickled(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        raw = head.replace(b"\n", b"\r\n").replace(b"half", "h\u00e9lf".encode()) + b"data: [DONE]\r\n\r\n"
        for start in range(0, len(raw), 3):  # three bytes at a time: lines, CRLFs and a character split
            await response.write(raw[start : start + 3])
            await asyncio.sleep(0)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/reset/v1/chat/completions", reset)
    app.router.add_post("/ended/v1/chat/completions", ended)
    app.router.add_post("/trickled/v1/chat/completions", trickled)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    transport = AiohttpTransport()

    try:
        for path, message in (("reset", "Response payload is not completed|Connection"), ("ended", r"ended before its end \(\[DONE\]\) after 1 events")):
            with pytest.raises(TransportError, match=message) as raised:
                await transport.send(TransportRequest(f"http://127.0.0.1:{port}/{path}/v1/chat/completions", {"stream": True}, stream=True))
            assert raised.value.kind is NoAnswer.BROKEN
        response = await transport.send(TransportRequest(f"http://127.0.0.1:{port}/trickled/v1/chat/completions", {"stream": True}, stream=True))
        assert json.loads(response.body)["choices"][0]["message"] == {"role": "assistant", "content": "h\u00e9lf"}
    finally:
        await transport.aclose()
        await runner.cleanup()
