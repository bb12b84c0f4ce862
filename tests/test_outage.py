"""A server that goes away mid-run for everyone is an outage of the run, not a failure of the lines in flight: the
run probes it one request at a time (at no cost of an attempt) and goes on when it is back, or stops with exit 3
past `RetryPolicy.max_outage`. Either way no failure row is written for it.

The attacker: a real loopback server that stops listening and drops its connections mid-run.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from rate_limited_processor import Limits, RetryPolicy, Settings, run_file_job
from rate_limited_processor.cli import EXIT_STOPPED, exit_code
from tests.helpers import chat_request, read_rows, unused_port, write_jsonl

N = 300


def app() -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        await asyncio.sleep(0.02)
        content = body["messages"][-1]["content"]
        return web.json_response({
            "choices": [{"message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        })

    application = web.Application()
    application.router.add_post("/v1/chat/completions", chat)
    return application


class Server:
    """The app on a fixed loopback port, which can go away (connections dropped, nothing listening) and come back."""

    def __init__(self) -> None:
        self.port = unused_port()
        self.runner: web.AppRunner | None = None

    async def up(self) -> None:
        self.runner = web.AppRunner(app(), shutdown_timeout=0)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True).start()

    async def down(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()
        self.runner = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


async def when_rows(path: Path, count: int) -> None:
    while not path.exists() or path.read_bytes().count(b"\n") < count:
        await asyncio.sleep(0.01)


async def run(tmp_path: Path, server: Server, outage: Callable[[], Awaitable[None]], max_outage: float) -> tuple[Any, list[Any]]:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(N)])
    output_path = tmp_path / "results.jsonl"
    retry = RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.2, max_outage=max_outage)
    settings = Settings(request_url=server.url, api_key=None, limits=Limits(6_000, 10**9), retry=retry, request_timeout=5)

    async def break_mid_run() -> None:
        await when_rows(output_path, 60)
        await outage()

    breaking = asyncio.ensure_future(break_mid_run())
    stats = await run_file_job(settings, input_path, output_path, show_progress=False)
    await breaking
    return stats, read_rows(output_path)


def failures(rows: list[Any]) -> list[Any]:
    return [row for row in rows if not isinstance(row[1], dict)]


async def test_a_server_gone_for_seconds_costs_no_line_a_failure_row(tmp_path: Path) -> None:
    server = Server()
    await server.up()

    async def outage() -> None:
        await server.down()
        await asyncio.sleep(2.0)  # 20 times the backoff cap: every line in flight would have used its attempts
        await server.up()

    try:
        stats, rows = await run(tmp_path, server, outage, max_outage=30)
    finally:
        await server.down()
    assert failures(rows) == [] and stats.failed == 0
    assert Counter(row[2]["id"] for row in rows) == Counter(range(N))
    assert exit_code(stats) == 0


async def test_a_server_that_does_not_come_back_stops_the_run_with_exit_3_and_no_failure_rows(tmp_path: Path) -> None:
    server = Server()
    await server.up()
    stats, rows = await run(tmp_path, server, server.down, max_outage=1.0)
    assert exit_code(stats) == EXIT_STOPPED and "an outage" in (stats.stop_reason or "")
    assert failures(rows) == [] and 60 <= len(rows) < N
    await server.up()  # back: the rerun sends the lines left, and only those
    try:
        settings = Settings(request_url=server.url, api_key=None, limits=Limits(6_000, 10**9), request_timeout=5)
        again = await run_file_job(settings, tmp_path / "requests.jsonl", tmp_path / "results.jsonl", show_progress=False)
    finally:
        await server.down()
    assert exit_code(again) == 0
    assert Counter(row[2]["id"] for row in read_rows(tmp_path / "results.jsonl")) == Counter(range(N))


def test_the_outage_rule_probes_then_stops_and_never_fails_the_line() -> None:
    from rate_limited_processor.core.decisions import JobState, Probe, RunState, StopRun, next_step
    from rate_limited_processor.core.retry_policy import Decision, Verdict

    policy = RetryPolicy(max_attempts=3, initial_delay=0.1, max_delay=5.0, max_outage=60.0)
    no_answer = Decision(Verdict.RETRY, "ClientConnectorError: connection refused", about_the_endpoint=True)
    last_attempt = JobState(attempts=3)
    assert next_step(no_answer, job=last_attempt, run=RunState(outage_for=1.0), policy=policy) == Probe(0.25)
    assert next_step(no_answer, job=last_attempt, run=RunState(outage_for=59.0), policy=policy) == Probe(5.0)
    step = next_step(no_answer, job=last_attempt, run=RunState(outage_for=61.0), policy=policy)
    assert isinstance(step, StopRun) and "an outage" in step.reason
    assert type(next_step(no_answer, job=last_attempt, run=RunState(), policy=policy)).__name__ == "Fail"  # others were answered
