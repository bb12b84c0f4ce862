"""Runs with --stream in virtual time, against the mock streaming with a time to first token and a gap
between tokens: every line once, each answer what the server streamed, cut streams retried and never
written, the timings exact, and the report's percentiles checked against the server's own record.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from rate_limited_processor import UNLIMITED, Limits, Processor, ResultKind, Settings, TransportRequest, TransportResponse, run_file_job
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.mock_server.anthropic import message_payload
from rate_limited_processor.mock_server.record import CUT, request_key
from rate_limited_processor.mock_server.responses import success_payload
from rate_limited_processor.providers.endpoints import Endpoint
from rate_limited_processor.transport.http import StreamingResponse
from rate_limited_processor.transport.streaming import streamed_body
from rate_limited_processor.ui.report import RunReport
from tests.helpers import chat_request, mock_url, nearest_rank, read_rows, served_stream_times, write_jsonl
from tests.virtual_time import run_virtual


def stream_settings(endpoint: str = "chat/completions", **overrides: Any) -> Settings:
    return Settings(**{"request_url": mock_url(endpoint), "api_key": None, "limits": UNLIMITED, "stream": True, **overrides})


def close_enough(reported: float, served: float) -> bool:
    """The issue's bound: within 10%, or 15 ms."""
    return abs(reported - served) <= max(0.10 * served, 0.015)


def test_every_line_once_each_answer_what_the_server_streamed_and_cut_streams_never_written(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(150)]
    requests_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    save_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(latency=0.02, time_to_first_token=0.1, inter_token_gap=0.005, faults={"stream_cut": 0.1, "reset": 0.02}, seed=3))

    settings = stream_settings(limits=Limits(6_000, 10_000_000))
    stats = run_virtual(run_file_job(settings, requests_path, save_path, transport=MockTransport(api), show_progress=False))

    assert stats.succeeded == 150 and stats.failed == 0
    assert api.record.count(CUT) > 5  # streams were cut half way, and sent again
    sent = Counter(request_key(streamed_body(Endpoint.CHAT_COMPLETIONS, {k: v for k, v in r.items() if k != "metadata"})) for r in requests)
    assert api.record.served_ok_keys() == sent  # each streamed to its end exactly once
    rows = read_rows(save_path)
    assert sorted(row[2]["id"] for row in rows) == list(range(150))  # every line once
    for request, response, _ in rows:
        assert request == {k: v for k, v in requests[_["id"]].items() if k != "metadata"}  # the line as given, not the streamed body
        body = streamed_body(Endpoint.CHAT_COMPLETIONS, request)
        assert response == success_payload(Endpoint.CHAT_COMPLETIONS, body, model="gpt-4o-mini", key=request_key(body))


def test_a_streamed_requests_timings_are_exact_in_virtual_time() -> None:
    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "twelve chars"}]}  # "echo: twelve chars": 18 chars, 5 tokens
    api = MockApi(MockConfig(latency=0.1, time_to_first_token=0.2, inter_token_gap=0.01))

    async def main() -> Any:
        processor = Processor(stream_settings(), transport=MockTransport(api))
        async with processor.run([request]) as results:
            return [result async for result in results]

    [result] = run_virtual(main())
    timings = result.timings
    assert result.kind is ResultKind.SUCCEEDED and timings is not None
    [served] = api.record.entries
    assert timings.sent == served.arrived_at and timings.scheduled == timings.sent  # nothing waited
    assert math.isclose(timings.first_byte - timings.sent, 0.1) and timings.first_byte == served.first_byte_at
    assert timings.tokens == served.token_times and len(timings.tokens) == 5
    assert math.isclose(timings.time_to_first_token, 0.3)
    assert [round(gap, 9) for gap in timings.inter_token_gaps()] == [0.01] * 4
    assert math.isclose(timings.latency, 0.34) and timings.finished == served.finished_at
    assert [attempt.outcome for attempt in timings.attempts] == [200]


def test_reported_percentiles_match_the_servers_own_record_and_queueing_shows_from_scheduling(tmp_path: Path) -> None:
    requests_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(200)])
    api = MockApi(MockConfig(latency=0.05, latency_jitter=0.3, time_to_first_token=0.1, inter_token_gap=0.01, seed=11))
    report = RunReport(streamed=True)
    # 1,200 RPM: the limiter holds requests back, so latency from scheduling exceeds latency from sending.
    stats = run_virtual(run_file_job(
        stream_settings(limits=Limits(1_200, 10_000_000), max_in_flight=4), requests_path, tmp_path / "out.jsonl",
        transport=MockTransport(api), show_progress=False, benchmark=report,
    ))
    built = report.build(stats)
    served = [entry for entry in api.record if entry.outcome == 200]
    assert built["requests"] == built["succeeded"] == len(served) == 200
    server_ttft, server_latency = served_stream_times(api.record)
    for name, values in (("ttft_s", server_ttft), ("latency_s", server_latency)):
        for percent in (50, 95):
            assert close_enough(built[name][f"p{percent}"], nearest_rank(values, percent)), (name, percent)
            # In virtual time the client sees what the server sent at the same instant: HdrHistogram's 0.1% is all.
            assert -1e-6 <= built[name][f"p{percent}"] - nearest_rank(values, percent) <= 0.001 * nearest_rank(values, percent) + 1e-6
    assert built["latency_from_scheduled_s"]["p50"] > built["latency_s"]["p50"]
    gaps = [later - earlier for entry in served for earlier, later in zip(entry.token_times, entry.token_times[1:], strict=False)]
    assert built["itl_s"]["count"] == len(gaps) and math.isclose(built["itl_s"]["p50"], 0.01, rel_tol=0.002)


def test_rate_limit_429s_while_streaming_are_plain_json_and_retried() -> None:
    api = MockApi(MockConfig(requests_per_minute=600, ratelimit_headers=False, time_to_first_token=0.05, inter_token_gap=0.01))
    requests = [chat_request(i) for i in range(60)]

    async def main() -> Any:
        # Told three times the server's limit: the server answers 429 (JSON, not a stream) and is obeyed.
        processor = Processor(stream_settings(limits=Limits(1_800, 10_000_000)), transport=MockTransport(api))
        async with processor.run(requests) as results:
            return [result async for result in results], processor.stats

    results, stats = run_virtual(main())
    assert all(result.kind is ResultKind.SUCCEEDED for result in results) and len(results) == 60
    assert stats.rate_limit_errors > 0
    limited = [r for r in results if r.timings is not None and any(a.rate_limited for a in r.timings.attempts)]
    assert limited and all(r.timings is not None and r.timings.attempts[-1].outcome == 200 for r in limited)


def test_a_function_transport_may_stream_and_a_stream_without_done_fails_as_no_answer() -> None:
    def event(delta: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"

    seen: list[TransportRequest] = []

    def whole(request: TransportRequest) -> TransportResponse:
        seen.append(request)
        body = event({"role": "assistant", "content": "o"}) + event({"content": "k"}) + b"data: [DONE]\n\n"
        return TransportResponse(200, {"Content-Type": "text/event-stream; charset=utf-8"}, body)  # a user's spelling

    async def endless(request: TransportRequest) -> StreamingResponse:
        async def chunks() -> Any:
            yield event({"role": "assistant", "content": "half an ans"})  # and then the body just ends
        return StreamingResponse(200, {"content-type": "text/event-stream"}, chunks())

    async def main(transport: Any) -> Any:
        settings = stream_settings(retry=Settings(request_url=mock_url()).retry.__class__(max_attempts=2, initial_delay=0.01))
        async with Processor(settings, transport=transport).run([{"model": "m", "messages": [{"role": "user", "content": "x"}]}]) as results:
            return [result async for result in results]

    [ok] = run_virtual(main(whole))
    assert ok.response is not None and ok.response["choices"][0]["message"] == {"role": "assistant", "content": "ok"}
    assert seen[0].stream and seen[0].body["stream"] is True and seen[0].body["stream_options"] == {"include_usage": True}
    [cut] = run_virtual(main(endless))
    assert cut.kind is ResultKind.FAILED and cut.response is None and cut.attempts == 2
    assert all("ended before its end ([DONE])" in error for error in cut.errors)


def test_a_stream_echoing_the_key_is_scrubbed_like_any_answer() -> None:
    key = "sk-proj-" + "s3cr3t" * 8

    def echo(request: TransportRequest) -> TransportResponse:
        header = request.headers["Authorization"]
        chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": f"you sent {header}"}}]}
        return TransportResponse(200, {"content-type": "text/event-stream"}, f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())

    async def main() -> Any:
        async with Processor(stream_settings(api_key=key), transport=echo).run([{"model": "m", "messages": [{"role": "user", "content": "x"}]}]) as results:
            return [result async for result in results]

    [result] = run_virtual(main())
    assert result.response is not None and key not in json.dumps(result.response)
    assert "you sent Bearer" in result.response["choices"][0]["message"]["content"]


def test_embeddings_in_a_streamed_run_are_sent_unstreamed() -> None:
    api = MockApi(MockConfig())

    async def main() -> Any:
        async with Processor(stream_settings("embeddings"), transport=MockTransport(api)).run([{"model": "e", "input": "text"}]) as results:
            return [result async for result in results]

    [result] = run_virtual(main())
    assert result.kind is ResultKind.SUCCEEDED and result.response is not None and result.response["data"]
    assert result.timings is not None and result.timings.tokens == ()


def test_a_line_that_asks_for_a_stream_itself_is_reassembled_without_the_flag() -> None:
    api = MockApi(MockConfig(time_to_first_token=0.05))
    line = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "streamed by request"}], "stream": True}

    async def main() -> Any:
        async with Processor(stream_settings(stream=False), transport=MockTransport(api)).run([line]) as results:
            return [result async for result in results]

    [result] = run_virtual(main())
    assert result.kind is ResultKind.SUCCEEDED
    expected = success_payload(Endpoint.CHAT_COMPLETIONS, line, model="gpt-4o-mini", key=request_key(line))
    del expected["usage"]  # the line did not ask for stream_options.include_usage, so the API sends none
    assert result.response == expected


# -- Anthropic's Messages API ----------------------------------------------------------------------------------

CLAUDE_KEY = "sk-ant-api03-streaming-0123456789"


def claude_request(i: int) -> dict[str, Any]:
    return {"model": "claude-3-5-haiku-latest", "max_tokens": 100, "messages": [{"role": "user", "content": f"Question {i}?"}], "metadata": {"id": i}}


def test_a_claude_run_streams_every_line_once_as_its_message_and_cut_streams_are_sent_again(tmp_path: Path) -> None:
    requests = [claude_request(i) for i in range(120)]
    requests_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    save_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(
        api_key=CLAUDE_KEY, output_tokens=12, latency=0.02, time_to_first_token=0.1, inter_token_gap=0.005, faults={"stream_cut": 0.1}, seed=5,
    ))
    settings = Settings(request_url="https://api.anthropic.com/v1/messages", api_key=CLAUDE_KEY, limits=UNLIMITED, stream=True)
    report = RunReport(streamed=True)
    stats = run_virtual(run_file_job(settings, requests_path, save_path, transport=MockTransport(api), show_progress=False, benchmark=report))

    assert stats.succeeded == 120 and stats.failed == 0
    assert api.record.count(CUT) > 3 and api.record.count(400) == 0, "no stream_options went to Anthropic"
    rows = read_rows(save_path)
    assert sorted(row[2]["id"] for row in rows) == list(range(120))
    for request, response, _ in rows:
        body = streamed_body(Endpoint.MESSAGES, request)
        assert response == message_payload(body, model="claude-3-5-haiku-latest", key=request_key(body), input_tokens=0, output_tokens=12)
    built = report.build(stats)
    server_ttft, _ = served_stream_times(api.record)
    assert built["ttft_s"]["count"] == 120 and close_enough(built["ttft_s"]["p50"], nearest_rank(server_ttft, 50))
    assert built["tpot_s"]["count"] == 120  # output tokens from message_delta's usage


def test_a_claude_streams_timings_are_exact_in_virtual_time() -> None:
    api = MockApi(MockConfig(api_key=CLAUDE_KEY, output_tokens=3, latency=0.1, time_to_first_token=0.2, inter_token_gap=0.01))
    settings = Settings(request_url="https://api.anthropic.com/v1/messages", api_key=CLAUDE_KEY, limits=UNLIMITED, stream=True)

    async def main() -> Any:
        processor = Processor(settings, transport=MockTransport(api))
        async with processor.run([{k: v for k, v in claude_request(0).items() if k != "metadata"}]) as results:
            return [result async for result in results]

    [result] = run_virtual(main())
    timings = result.timings
    assert result.kind is ResultKind.SUCCEEDED and timings is not None
    [served] = api.record.entries
    assert timings.tokens == served.token_times and len(timings.tokens) == 4  # "echo echo echo": 14 characters in pieces of 4
    assert math.isclose(timings.time_to_first_token, 0.3)
    assert [round(gap, 9) for gap in timings.inter_token_gaps()] == [0.01] * 3
    assert result.response is not None and result.response["content"] == [{"type": "text", "text": "echo echo echo"}]
