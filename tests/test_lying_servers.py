"""Servers that lie: a 200 that is an error, an answer no reader can hold, another request's answer, a limit
no account has. None of them may end up in a row as a success, and none may stall the run in silence.

The lies are told over real sockets (an aiohttp server, and a raw asyncio protocol for what aiohttp's own
server would never send); the absurd limits, which are about time, run in virtual time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rate_limited_processor import (
    UNLIMITED,
    Limits,
    NoAnswer,
    Processor,
    Settings,
    TransportError,
    TransportRequest,
    TransportResponse,
    json_response,
    run_file_job,
)
from rate_limited_processor.core.learned_limits import LimitTuner, SendMark, parse_rate_limit_headers
from rate_limited_processor.transport.http import AiohttpTransport
from tests.helpers import FAST_RETRY, serving, write_jsonl
from tests.virtual_time import run_virtual, virtual_time


def chat(content: str, i: int) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}], "max_tokens": 5, "metadata": {"id": i}}


def true_answer(content: str) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer to {content}"}}]}


def strict_loads(line: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a row")

    def finite(text: str) -> float:
        assert math.isfinite(float(text)), f"{text} in a row"
        return float(text)

    return json.loads(line, parse_constant=refuse, parse_float=finite)


ANSWER = json.dumps(true_answer("x"))[:-1]  # an answer's start, to graft a lie onto
#: lie -> (the body of a 200 told on the first attempt, what the attempt's error must say)
FIRST_LIES = {
    "an error in a 200": (
        b'{"error": {"message": "upstream overloaded", "type": "server_error"}}', "HTTP 200 (an error body) server_error: upstream overloaded"
    ),
    "100,000 deep": (b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "unreadable JSON body (nested deeper than"),
    "1e400": ((ANSWER + ', "score": 1e400}').encode(), "1e400 is too large for JSON"),
    "5,000 digits": ((ANSWER + ', "seed": ' + "9" * 5_000 + "}").encode(), "more than 4300 digits"),
    "a lone surrogate": (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "\\udc00"}}]}', "unpaired UTF-16 surrogate"),
    "an embeddings answer": (b'{"object": "list", "data": [{"index": 0, "embedding": [0.5]}]}', "not a /chat/completions answer"),
}
#: lie -> (told on every attempt, what the failure row must say, attempts made)
LASTING_LIES = {
    "a 200 that is a 400": (
        b'{"error": {"message": "Invalid \'n\'", "type": "invalid_request_error"}}', "HTTP 200 (an error body) invalid_request_error: Invalid 'n'", 1
    ),
    "a 200 that is always a 500": (b'{"error": {"message": "still broken", "type": "server_error"}}', "HTTP 200 (an error body) server_error: still broken", 5),
}


@pytest.fixture
async def liar() -> AsyncIterator[tuple[str, Counter[str]]]:
    """A chat server that lies as each request's content asks it to; the truth after the first attempt."""
    attempts: Counter[str] = Counter()

    async def answer(request: web.Request) -> web.Response:
        content = json.loads(await request.read())["messages"][0]["content"]
        attempts[content] += 1
        lie = content.removeprefix("first:").removeprefix("always:")
        if content.startswith("always:"):
            return web.Response(body=LASTING_LIES[lie][0], content_type="application/json")
        if content.startswith("first:") and attempts[content] == 1:
            return web.Response(body=FIRST_LIES[lie][0], content_type="application/json")
        return web.json_response(true_answer(content))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    async with serving(app) as origin:
        yield f"{origin}/v1/chat/completions", attempts


async def test_no_lie_of_a_200_is_written_as_a_success_and_each_is_named(tmp_path: Path, liar: tuple[str, Counter[str]]) -> None:
    url, attempts = liar
    contents = [f"first:{lie}" for lie in FIRST_LIES] + [f"always:{lie}" for lie in LASTING_LIES] + ["honest"]
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat(content, i) for i, content in enumerate(contents)])
    output_path = tmp_path / "results.jsonl"
    settings = Settings(request_url=url, api_key=None, limits=UNLIMITED, retry=FAST_RETRY)
    stats = await run_file_job(settings, input_path, output_path, show_progress=False)

    rows = {row[2]["id"]: row for row in map(strict_loads, output_path.read_text(encoding="utf-8").splitlines())}
    assert len(rows) == len(contents) and stats.stop_reason is None
    for i, content in enumerate(contents):
        request, outcome = rows[i][0], rows[i][1]
        lie = content.partition(":")[2]
        if content.startswith("always:"):
            _, says, tries = LASTING_LIES[lie]
            assert isinstance(outcome, list) and len(outcome) == tries == attempts[content], (content, outcome)
            assert all(error == says for error in outcome)
        else:
            assert outcome == true_answer(request["messages"][0]["content"]), content  # the truth, and only the truth
        if content.startswith("first:"):
            assert attempts[content] == 2  # the lie was retried (what each lie's error says: the next test)
    assert (stats.succeeded, stats.failed) == (len(FIRST_LIES) + 1, len(LASTING_LIES))


@pytest.mark.parametrize("lie", list(FIRST_LIES))
async def test_each_lie_is_retried_with_a_reason_that_names_it(liar: tuple[str, Counter[str]], lie: str) -> None:
    url, _ = liar
    settings = Settings(request_url=url, api_key=None, limits=UNLIMITED, retry=FAST_RETRY)
    results = [result async for result in Processor(settings).process([chat(f"first:{lie}", 0)])]
    assert len(results) == 1 and results[0].succeeded and results[0].attempts == 2
    assert len(results[0].errors) == 1 and FIRST_LIES[lie][1] in results[0].errors[0]


# -- another request's answer --------------------------------------------------------------------------------


def http_response(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class PushesExtraAnswers(asyncio.Protocol):
    """Answers each request with its own tag, then, a moment later, pushes an answer nobody asked for."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            tag = json.loads(body)["messages"][0]["content"]
            assert self.transport is not None
            self.transport.write(http_response(json.dumps(true_answer(tag)).encode()))
            extra = http_response(json.dumps(true_answer("NOBODY ASKED")).encode())
            asyncio.get_running_loop().call_later(0.01, self._push, extra)

    def _push(self, extra: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(extra)


@pytest.fixture
async def pusher() -> AsyncIterator[str]:
    server = await asyncio.get_running_loop().create_server(PushesExtraAnswers, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1/chat/completions"
    finally:
        server.close()


async def test_an_answer_pushed_onto_an_idle_connection_is_never_taken_for_the_next_request_s(pusher: str) -> None:
    transport = AiohttpTransport(max_connections=1)  # one connection, reused if it may be
    try:
        for i in range(4):
            response = await transport.send(TransportRequest(pusher, chat(f"request {i}", i) | {"metadata": None}, timeout=5))
            assert json.loads(response.body) == true_answer(f"request {i}")
            await asyncio.sleep(0.05)  # idle: the extra answer arrives now
    finally:
        await transport.aclose()


async def test_a_paced_file_run_against_that_server_writes_each_request_its_own_answer(tmp_path: Path, pusher: str) -> None:
    n = 20  # 15 a second: idle gaps of 67 ms, the extra answer comes 10 ms into each
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat(f"request {i}", i) for i in range(n)])
    output_path = tmp_path / "results.jsonl"
    settings = Settings(request_url=pusher, api_key=None, limits=Limits(requests_per_minute=900, tokens_per_minute=10**9), retry=FAST_RETRY)
    stats = await run_file_job(settings, input_path, output_path, show_progress=False)
    rows = [json.loads(line) for line in output_path.read_text().splitlines()]
    assert stats.succeeded == n and len(rows) == n
    for request, response, _ in rows:
        assert response == true_answer(request["messages"][0]["content"])


# -- limits no account has ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stated",
    [
        {"x-ratelimit-limit-requests": "0.001"},
        {"x-ratelimit-limit-requests": "-60"},
        {"x-ratelimit-limit-requests": "NaN"},
        {"x-ratelimit-limit-requests": "lots"},
        {"x-ratelimit-limit-tokens": "0.5", "x-ratelimit-limit-requests": "1e-9"},
    ],
    ids=["0.001", "negative", "NaN", "words", "both tiny"],  # -1 and 0: Azure's "unknown" (test_azure_unknown_limits)
)
def test_an_absurd_stated_limit_is_ignored_with_one_warning_and_the_run_goes_on(
    stated: dict[str, str], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    def server(request: TransportRequest) -> TransportResponse:
        return json_response(true_answer("x"), headers=stated)

    n = 40
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat(f"q{i}", i) for i in range(n)])

    async def main() -> tuple[Any, float]:
        started = virtual_time()
        settings = Settings(request_url="http://liar.invalid/v1/chat/completions", api_key=None)  # limits: auto, learned
        stats = await run_file_job(settings, input_path, tmp_path / "out.jsonl", show_progress=False, transport=server)
        return stats, virtual_time() - started

    with caplog.at_level(logging.WARNING, logger="rate_limited_processor"):
        stats, elapsed = run_virtual(main())
    assert stats.succeeded == n
    assert elapsed < 1.0  # not one request per 17 hours: the limit was not adopted
    warnings = [record.getMessage() for record in caplog.records if "no account's limit" in record.getMessage()]
    assert len(warnings) == len(stated)  # one per header, not one per answer
    for name in stated:
        assert any(name in warning for warning in warnings)


def test_a_plausible_small_limit_is_still_adopted() -> None:
    report = parse_rate_limit_headers({"x-ratelimit-limit-requests": "3", "x-ratelimit-limit-tokens": "40000"})
    assert (report.limit_requests, report.limit_tokens, report.ignored) == (3.0, 40_000.0, ())
    heard: list[str] = []
    tuner = LimitTuner(None, warn=heard.append)
    tuner.observe(SendMark(0.0, 1, 10), report)
    assert tuner.limits().requests_per_minute == 3.0 and heard == []


# -- an answer without end ------------------------------------------------------------------------------------


async def test_a_body_without_end_is_cut_off_at_the_cap_not_read_into_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from rate_limited_processor.transport import http as transport_module

    monkeypatch.setattr(transport_module, "MAX_RESPONSE_BYTES", 1_000_000)

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b'{"choices": ["')
        while True:  # chunked, forever
            await response.write(b"x" * 65_536)

    async def claims_a_gigabyte(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(10**9)})
        await response.prepare(request)
        await response.write(b"{")
        await asyncio.sleep(10)
        return response

    app = web.Application()
    app.router.add_post("/endless/v1/chat/completions", endless)
    app.router.add_post("/huge/v1/chat/completions", claims_a_gigabyte)
    transport = AiohttpTransport()
    async with serving(app, handler_cancellation=True) as origin:
        try:
            for path, says in (("endless", "more than the 1,000,000 bytes read"), ("huge", "1,000,000,000 bytes, more than the 1,000,000 read")):
                with pytest.raises(TransportError, match=says) as error:
                    await transport.send(TransportRequest(f"{origin}/{path}/v1/chat/completions", {"model": "m"}, timeout=5))
                assert error.value.kind is NoAnswer.BROKEN
        finally:
            await transport.aclose()
