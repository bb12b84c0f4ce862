"""The dispatch loop at its edges: failing sources and limiters, slow sources, stops, early exits."""

from __future__ import annotations

import math
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from rate_limited_processor import UNLIMITED, InProcessLimiter, Limits, Processor, RetryPolicy, RunStopped, Settings
from rate_limited_processor.mock_server import MockConfig, MockServer
from tests.helpers import FAST_RETRY, embedding_request



def settings_for(url: str, **overrides: Any) -> Settings:
    return Settings(**{"request_url": url, "limits": UNLIMITED, "retry": FAST_RETRY, **overrides})


async def collect(processor: Processor, requests: Any) -> tuple[list[Any], RunStopped | None]:
    results = []
    try:
        async for result in processor.process(requests):
            results.append(result)
    except RunStopped as stopped:
        return results, stopped
    return results, None


async def test_a_source_that_fails_midway_stops_the_run_with_the_cause() -> None:
    def source() -> Any:
        yield embedding_request(1)
        yield embedding_request(2)
        raise OSError("the disk went away")

    async with MockServer() as server:
        processor = Processor(settings_for(server.url("embeddings")))
        results, stopped = await collect(processor, source())
    assert stopped is not None and "reading the requests failed: OSError: the disk went away" in str(stopped)
    assert isinstance(stopped.__cause__, OSError)
    assert sorted(result.metadata["id"] for result in results) == [1, 2]  # what was sent still arrives


class PauseFails(InProcessLimiter):
    """A shared limiter whose store goes away when it is asked to pause everyone."""

    async def pause(self, seconds: float) -> None:
        raise ConnectionError("limiter store unreachable")


async def test_a_limiter_that_fails_stops_the_run_and_leaves_the_request_unfinished_not_lost() -> None:
    async with MockServer(MockConfig(requests_per_minute=60)) as server:  # 1 per second: the 2nd gets a 429
        settings = Settings(request_url=server.url("embeddings"), limits=Limits(6_000, math.inf), retry=FAST_RETRY)
        processor = Processor(settings, limiter=PauseFails(settings.limits))
        results, stopped = await collect(processor, [embedding_request(i) for i in range(5)])
        sent = len({entry.key for entry in server.record})
    assert stopped is not None and "the rate limiter failed: ConnectionError" in str(stopped)
    assert processor.stats.unfinished >= 1
    # Every request that reached the server has a result or is counted as unfinished: none vanished.
    # (The feeder may also hold one it had read but not sent when the run stopped: unfinished too.)
    assert sent <= len(results) + processor.stats.unfinished <= sent + 1


async def test_a_slow_async_source_does_not_hold_up_retries_that_are_due() -> None:
    produced_second_at: list[float] = []

    async def source() -> AsyncIterator[dict[str, Any]]:
        yield embedding_request(1)
        await asyncio.sleep(1.5)  # a pipeline stage that takes its time
        produced_second_at.append(time.monotonic())
        yield embedding_request(2)

    async with MockServer(MockConfig(faults={"500": 1.0})) as server:  # every attempt fails, then is retried
        settings = settings_for(server.url("embeddings"), retry=RetryPolicy(max_attempts=3, initial_delay=0.05, max_delay=0.1))
        processor = Processor(settings)
        finished_at = {}
        async for result in processor.process(source()):
            finished_at[result.metadata["id"]] = time.monotonic()
    # Request 1 went through all three attempts while the source was still producing request 2.
    assert finished_at[1] < produced_second_at[0]
    assert processor.stats.attempts == 6


async def test_stop_before_the_run_sends_nothing() -> None:
    async with MockServer() as server:
        processor = Processor(settings_for(server.url("embeddings")))
        processor.stop("changed my mind")
        results, stopped = await collect(processor, [embedding_request(i) for i in range(20)])
        assert len(server.record) == 0
    assert results == [] and stopped is not None and "changed my mind" in str(stopped)


async def test_a_consumer_that_stops_early_and_closes_the_generator_stops_the_sending() -> None:
    async with MockServer(MockConfig(latency=0.01)) as server:
        processor = Processor(settings_for(server.url("embeddings"), max_in_flight=10))
        results = processor.process(embedding_request(i) for i in range(10_000))
        async with contextlib.aclosing(results):
            async for _ in results:
                break
        sent = len(server.record)
        await asyncio.sleep(0.3)
        assert len(server.record) == sent  # nothing more went out after the close
    assert sent < 100


async def test_a_wait_the_api_asks_for_beyond_the_maximum_stops_the_run() -> None:
    async with MockServer(MockConfig(faults={"azure_429": 1.0})) as server:  # "retry after 1 second"
        settings = settings_for(server.url("embeddings"), retry=RetryPolicy(max_server_wait=0.5))
        processor = Processor(settings)
        results, stopped = await collect(processor, [embedding_request(i) for i in range(3)])
    assert results == []
    assert stopped is not None and "longer than 0.5s" in str(stopped) and "rerun later" in str(stopped)


@pytest.mark.parametrize("key", ["sk-with\x00nul", "sk-with space", "sk-line\nbreak-inside"])
def test_keys_that_cannot_be_sent_are_refused_up_front_without_showing_them(key: str) -> None:
    with pytest.raises(ValueError) as error:
        Settings(request_url="https://api.openai.com/v1/embeddings", api_key=key)
    assert key not in str(error.value)


def test_a_key_read_from_a_file_loses_its_trailing_newline() -> None:
    settings = Settings(request_url="https://api.openai.com/v1/embeddings", api_key="sk-from-a-file\n")
    assert settings.api_key is not None and settings.api_key.reveal() == "sk-from-a-file"


async def test_no_piece_of_the_key_survives_in_a_long_error_message_that_echoes_it() -> None:
    key = "sk-" + "K3y" * 30  # 93 characters
    echo = f"{'x' * 470} your header was Bearer {key} and that is not allowed"  # the cut at 500 falls inside the key

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": echo, "type": "invalid_request_error"}}, status=400)

    app = web.Application()
    app.router.add_post("/v1/embeddings", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        processor = Processor(settings_for(f"http://127.0.0.1:{port}/v1/embeddings", api_key=key))
        results, _ = await collect(processor, [embedding_request(1)])
    finally:
        await runner.cleanup()
    error = results[0].errors[0]
    assert error.startswith("HTTP 400")
    assert "K3yK3yK3y" not in error  # not even a fragment
