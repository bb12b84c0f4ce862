"""The runner end to end, in virtual time: the project's strict mock as the transport, no sockets, no sleeping.

Every test here runs on `VirtualTimeLoop`: the mock's buckets and latency, the client's pacing, backoffs
and timeouts share one virtual clock, so a minute of rate limiting takes milliseconds, timings are exact,
and a hang fails the test at once (`Deadlock`) instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import (
    UNLIMITED,
    InProcessLimiter,
    Limits,
    NoAnswer,
    Processor,
    RequestResult,
    ResultKind,
    RetryPolicy,
    RunStopped,
    Settings,
    TransportError,
    TransportRequest,
    TransportResponse,
    json_response,
    process_requests,
    process_requests_sync,
    run_file_job,
)
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.mock_server.record import request_key
from rate_limited_processor.mock_server.responses import response_matches
from rate_limited_processor.providers.endpoints import endpoint_from_url
from rate_limited_processor.providers.token_estimation import TokenEstimator
from tests.helpers import chat_request, embedding_request, mock_url, read_rows, write_jsonl
from tests.virtual_time import run_virtual, virtual_time


def settings_for(endpoint: str = "chat/completions", **overrides: Any) -> Settings:
    """The product's own retry policy (its real backoffs cost nothing in virtual time), no key, no limits."""
    return Settings(**{"request_url": mock_url(endpoint), "api_key": None, "limits": UNLIMITED, **overrides})


async def collect(processor: Processor, requests: Any) -> tuple[list[RequestResult], RunStopped | None]:
    results: list[RequestResult] = []
    try:
        async with processor.run(requests) as run:
            async for result in run:
                results.append(result)
    except RunStopped as stopped:
        return results, stopped
    return results, None


def body_of(request: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in request.items() if k != "metadata"}


# -- under a strict limit, on time ------------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, make_request, limits",
    [
        # RPM binds: ~45 tokens per chat request, 6,000 RPM = 100/s, TPM loose.
        ("chat/completions", chat_request, Limits(requests_per_minute=6_000, tokens_per_minute=3_000_000)),
        # TPM binds: ~12 tokens per embedding, 60,000 TPM = 1,000 tok/s = ~80 requests/s.
        ("embeddings", embedding_request, Limits(requests_per_minute=120_000, tokens_per_minute=60_000)),
    ],
)
def test_a_large_file_under_a_strict_limit_arrives_exactly_once_at_the_pace_the_limits_allow(endpoint: str, make_request: Any, limits: Limits) -> None:
    requests = [make_request(i) for i in range(2_000)]
    api = MockApi(MockConfig(requests_per_minute=limits.requests_per_minute, tokens_per_minute=limits.tokens_per_minute, latency=0.05))
    estimator = TokenEstimator()
    tokens = sum(estimator.estimate(endpoint_from_url(mock_url(endpoint)), body_of(request)) for request in requests)
    assert limits.requests_per_minute is not None and limits.tokens_per_minute is not None
    ideal = max(len(requests) / (limits.requests_per_minute / 60), tokens / (limits.tokens_per_minute / 60))

    async def main() -> tuple[list[RequestResult], float, Processor]:
        processor = Processor(settings_for(endpoint, limits=limits), transport=MockTransport(api))
        started = virtual_time()
        results, stopped = await collect(processor, requests)
        assert stopped is None
        return results, virtual_time() - started, processor

    results, elapsed, processor = run_virtual(main())
    assert Counter(result.metadata["id"] for result in results) == Counter(range(2_000))
    assert all(response_matches(endpoint, result.request, result.response or {}) for result in results)
    assert set(api.record.served_ok_keys().values()) == {1} and sum(api.record.served_ok_keys().values()) == 2_000
    assert api.record.count(429) <= 20, f"429s on more than 1% of requests: {api.record.counts()}"
    # Even pacing from empty buckets: the run takes what the limits force, plus one answer's latency.
    assert ideal * 0.99 <= elapsed <= ideal * 1.02 + 0.05, f"{elapsed:.2f}s against an ideal of {ideal:.2f}s"
    assert processor.stats.succeeded == 2_000 and processor.stats.unfinished == 0


# -- faults -----------------------------------------------------------------------------------------


def test_injected_faults_are_retried_until_every_request_succeeds() -> None:
    requests = [chat_request(i) for i in range(300)]
    api = MockApi(MockConfig(faults={"500": 0.05, "503": 0.05, "reset": 0.05, "hang": 0.03, "html_502": 0.05}, seed=7))
    settings = settings_for(retry=RetryPolicy(max_attempts=8), request_timeout=30)
    processor = Processor(settings, transport=MockTransport(api))

    results, stopped = run_virtual(collect(processor, requests))
    assert stopped is None and len(results) == 300 and all(result.succeeded for result in results)
    counts = api.record.counts()
    for kind in (500, 503, 502, "reset", "hang"):
        assert counts[kind] > 0, f"fault {kind} was never injected: {counts}"
    assert processor.stats.retries == sum(result.attempts - 1 for result in results) == sum(counts.values()) - 300
    # A success after failures keeps the failures it survived in the result, not in the row.
    assert all(result.errors for result in results if result.attempts > 1)
    timeouts = [error for result in results for error in result.errors if error.startswith("TimeoutError")]
    assert len(timeouts) == counts["hang"]


def test_a_400_is_recorded_after_one_attempt() -> None:
    bad = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "n": 500, "max_tokens": 1}
    api = MockApi()
    results, _ = run_virtual(collect(Processor(settings_for(), transport=MockTransport(api)), [bad, chat_request(1)]))
    assert api.record.count(400) == 1
    by_index = {result.index: result for result in results}
    assert by_index[1].attempts == 1 and by_index[1].kind is ResultKind.FAILED
    assert by_index[1].errors[0].startswith("HTTP 400") and "'n'" in by_index[1].errors[0]
    assert by_index[2].kind is ResultKind.SUCCEEDED


@pytest.mark.parametrize(
    "mock, expected",
    [
        (MockConfig(api_key="sk-the-right-key"), "HTTP 401"),
        (MockConfig(faults={"insufficient_quota": 1.0}, faults_after=40), "insufficient_quota"),
    ],
)
def test_errors_that_fail_every_request_stop_the_run_and_write_only_real_results(tmp_path: Path, mock: MockConfig, expected: str) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(500)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(mock)
    settings = settings_for(api_key="sk-a-wrong-key", limits=Limits(6_000, math.inf), max_in_flight=5)

    stats = run_virtual(run_file_job(settings, input_path, output_path, show_progress=False, transport=MockTransport(api)))
    assert stats.stop_reason is not None and expected in stats.stop_reason
    assert len(api.record) < 100, "dispatch stopped at once"
    rows = read_rows(output_path) if output_path.exists() else []  # a run with no row leaves no file
    assert all(isinstance(row[1], dict) for row in rows)  # what was not finished is left for a rerun
    assert len(rows) == stats.succeeded < 500 and stats.failed == 0
    # What was sent but not written is unfinished, and so is the one the feeder had read but not yet sent.
    assert len(api.record) - stats.succeeded <= stats.unfinished <= len(api.record) - stats.succeeded + 1


# -- the 429 pause ------------------------------------------------------------------------------------


def test_after_a_429_nothing_is_sent_during_the_pause_and_every_429_is_counted() -> None:
    # The mock allows 1 request per second; the client is told 100 per second and (no x-ratelimit headers,
    # as behind a gateway) cannot learn better: it will be rate limited.
    api = MockApi(MockConfig(requests_per_minute=60, ratelimit_headers=False))
    settings = settings_for("embeddings", limits=Limits(6_000, math.inf), retry=RetryPolicy(max_attempts=20), max_in_flight=50)
    processor = Processor(settings, transport=MockTransport(api))

    results, stopped = run_virtual(collect(processor, [embedding_request(i) for i in range(6)]))
    assert stopped is None and all(result.succeeded for result in results)
    entries = list(api.record)
    rejections = [entry for entry in entries if entry.outcome == 429]
    assert rejections, "the test needs at least one 429"
    assert processor.stats.rate_limit_errors == len(rejections)
    for rejection in rejections:
        assert rejection.retry_after is not None and rejection.retry_after > 0.2
        during_pause = [e for e in entries if rejection.arrived_at < e.arrived_at < rejection.arrived_at + rejection.retry_after - 1e-6]
        assert during_pause == [], f"requests arrived during a {rejection.retry_after:.2f}s pause"


class RecordingLimiter(InProcessLimiter):
    """The in-process limiter, counting what the runner tells it."""

    def __init__(self, limits: Limits) -> None:
        super().__init__(limits)
        self.acquired: list[int] = []
        self.refusals: list[int] = []

    async def acquire(self, tokens: int, output_tokens: int = 0) -> Any:
        self.acquired.append(tokens)
        return await super().acquire(tokens, output_tokens)

    async def refused(self, tokens: int, output_tokens: int = 0) -> None:
        self.refusals.append(tokens)
        await super().refused(tokens, output_tokens)


def test_every_attempt_the_server_refused_is_handed_back_to_the_limiter() -> None:
    api = MockApi(MockConfig(faults={"500": 0.2, "reset": 0.1}, seed=3))
    limiter = RecordingLimiter(UNLIMITED)
    processor = Processor(settings_for(retry=RetryPolicy(max_attempts=10)), transport=MockTransport(api), limiter=limiter)

    results, _ = run_virtual(collect(processor, [chat_request(i) for i in range(100)]))
    refused = api.record.count(500) + api.record.count("reset")
    assert refused > 10
    assert len(limiter.acquired) == processor.stats.attempts == 100 + refused
    assert len(limiter.refusals) == refused  # the server spent nothing on these: neither may we count them
    assert all(result.succeeded for result in results)


# -- bad input --------------------------------------------------------------------------------------


def test_malformed_lines_are_recorded_with_their_line_numbers_and_the_rest_processed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [chat_request(1), "{not json", chat_request(3), "[1, 2, 3]", {"model": "gpt-4o-mini", "metadata": {"id": 5}}, "", chat_request(7)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)
    output_path = tmp_path / "results.jsonl"
    api = MockApi()
    with caplog.at_level("ERROR", logger="rate_limited_processor"):
        stats = run_virtual(run_file_job(settings_for(), input_path, output_path, show_progress=False, transport=MockTransport(api)))
    assert len(api.record) == 3  # only the good lines were sent
    rows = read_rows(output_path)
    assert len(rows) == 6
    errors = sorted(row[1][0] for row in rows if isinstance(row[1], list))
    assert errors[0].startswith("line 2: not valid JSON")
    assert errors[1:] == ["line 4: expected a JSON object, got list", "line 5: missing required field 'messages' for /chat/completions"]
    assert (stats.succeeded, stats.invalid, stats.failed) == (3, 3, 0)
    for reason in ("line 2", "line 4", "line 5"):
        assert reason in caplog.text


# -- the library --------------------------------------------------------------------------------------


def test_the_library_takes_an_async_iterable_and_yields_results_without_files() -> None:
    async def generate() -> AsyncIterator[dict[str, Any]]:
        for i in range(50):
            yield embedding_request(i)

    async def main() -> list[RequestResult]:
        return [result async for result in process_requests(generate(), settings_for("embeddings"), transport=MockTransport(MockApi()))]

    results = run_virtual(main())
    assert sorted(result.metadata["id"] for result in results) == list(range(50))
    assert all(result.attempts == 1 and result.response and result.response["data"] for result in results)
    assert all(request_key(result.request) for result in results)


def test_run_stopped_is_raised_after_the_last_result_and_names_the_cause() -> None:
    api = MockApi(MockConfig(api_key="sk-right"))
    processor = Processor(settings_for("embeddings", api_key="sk-wrong"), transport=MockTransport(api))
    results, stopped = run_virtual(collect(processor, [embedding_request(i) for i in range(10)]))
    assert stopped is not None and "401" in str(stopped) and stopped.stats is processor.stats
    assert results == [] and processor.stats.unfinished >= 1


def test_a_plain_function_can_be_the_transport() -> None:
    seen: list[str] = []

    async def model(request: TransportRequest) -> dict[str, Any]:
        seen.append(request.url)
        text = request.body["messages"][-1]["content"]
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text.upper()}}]}

    results, _ = run_virtual(collect(Processor(settings_for(), transport=model), [chat_request(i) for i in range(5)]))
    assert sorted(result.response["choices"][0]["message"]["content"] for result in results if result.response) == sorted(
        chat_request(i)["messages"][-1]["content"].upper() for i in range(5)
    )
    assert seen == [mock_url()] * 5


def test_a_function_transport_that_raises_a_network_error_is_retried_like_a_lost_connection() -> None:
    calls = Counter[int]()

    def flaky(request: TransportRequest) -> TransportResponse:
        number = request.body["metadata_id"]
        calls[number] += 1
        if calls[number] == 1:
            raise TransportError(NoAnswer.BROKEN, "connection reset")
        if calls[number] == 2:
            raise ConnectionResetError("the model's socket closed")
        return json_response({"choices": [], "ok": number})

    requests = [{"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata_id": i} for i in range(3)]
    results, _ = run_virtual(collect(Processor(settings_for(), transport=flaky), requests))
    assert all(result.attempts == 3 and result.succeeded for result in results)
    assert results[0].errors == ("connection reset", "ConnectionResetError: the model's socket closed")


def test_a_bug_in_a_custom_transport_stops_the_run_as_the_bug_it_is(caplog: pytest.LogCaptureFixture) -> None:
    calls = Counter[int]()

    def buggy(request: TransportRequest) -> dict[str, Any]:
        calls[request.body["metadata_id"]] += 1
        answer: dict[str, Any] = {"choices": []}
        if request.body["metadata_id"] == 2:
            return answer["data"]  # a KeyError: the bug
        return answer

    requests = [{"model": "m", "messages": [{"role": "user", "content": "x"}], "metadata_id": i} for i in range(5)]
    results, stopped = run_virtual(collect(Processor(settings_for(), transport=buggy), requests))
    assert calls[2] == 1  # not retried
    assert stopped is not None and isinstance(stopped.__cause__, KeyError)  # raised with the bug as its cause
    assert "the transport raised KeyError: 'data'" in str(stopped) and "not a network error" in str(stopped)
    assert "Traceback" in caplog.text and "return answer[\"data\"]" in caplog.text
    assert all(result.succeeded for result in results) and 2 not in [result.index - 1 for result in results]  # no failure row for it


# -- the run's edges: sources, limiters, stops, early exits -------------------------------------------


def test_a_source_that_fails_midway_stops_the_run_with_the_cause() -> None:
    def source() -> Any:
        yield embedding_request(1)
        yield embedding_request(2)
        raise OSError("the disk went away")

    processor = Processor(settings_for("embeddings"), transport=MockTransport(MockApi()))
    results, stopped = run_virtual(collect(processor, source()))
    assert stopped is not None and "reading the requests failed: OSError: the disk went away" in str(stopped)
    assert isinstance(stopped.__cause__, OSError)
    assert sorted(result.metadata["id"] for result in results) == [1, 2]  # what was sent still arrives


class PauseFails(InProcessLimiter):
    """A shared limiter whose store goes away when it is asked to pause everyone."""

    async def pause(self, seconds: float) -> None:
        raise ConnectionError("limiter store unreachable")


def test_a_limiter_that_fails_stops_the_run_and_leaves_the_request_unfinished_not_lost() -> None:
    api = MockApi(MockConfig(requests_per_minute=60, ratelimit_headers=False))  # 1 per second: the 2nd request gets a 429
    settings = settings_for("embeddings", limits=Limits(6_000, math.inf))
    processor = Processor(settings, limiter=PauseFails(settings.limits), transport=MockTransport(api))
    results, stopped = run_virtual(collect(processor, [embedding_request(i) for i in range(5)]))
    assert stopped is not None and "the rate limiter failed: ConnectionError" in str(stopped)
    # Every request that was read has a result or is unfinished: none vanished.
    sent = len({entry.key for entry in api.record})
    assert processor.stats.unfinished >= 1
    assert sent <= len(results) + processor.stats.unfinished <= sent + 1


def test_a_slow_async_source_does_not_hold_up_retries_that_are_due() -> None:
    produced_second_at: list[float] = []

    async def source() -> AsyncIterator[dict[str, Any]]:
        yield embedding_request(1)
        await asyncio.sleep(30)  # a pipeline stage that takes its time
        produced_second_at.append(virtual_time())
        yield embedding_request(2)

    async def main() -> dict[int, float]:
        api = MockApi(MockConfig(faults={"500": 1.0}))  # every attempt fails, then is retried
        processor = Processor(settings_for("embeddings", retry=RetryPolicy(max_attempts=3)), transport=MockTransport(api))
        finished_at = {}
        async with processor.run(source()) as results:
            async for result in results:
                finished_at[result.metadata["id"]] = virtual_time()
        assert processor.stats.attempts == 6
        return finished_at

    finished_at = run_virtual(main())
    # Request 1 went through all three attempts (about 3 s of backoff) while the source was still producing request 2.
    assert finished_at[1] < produced_second_at[0] - 20


def test_stop_before_the_run_sends_nothing() -> None:
    api = MockApi()
    processor = Processor(settings_for("embeddings"), transport=MockTransport(api))
    processor.stop("changed my mind")
    results, stopped = run_virtual(collect(processor, [embedding_request(i) for i in range(20)]))
    assert len(api.record) == 0 and results == []
    assert stopped is not None and "changed my mind" in str(stopped)


def test_leaving_the_run_early_is_a_plain_break_and_no_task_outlives_the_block() -> None:
    api = MockApi(MockConfig(latency=0.01))

    async def main() -> None:
        processor = Processor(settings_for("embeddings", max_in_flight=10), transport=MockTransport(api))
        async with processor.run(embedding_request(i) for i in range(10_000)) as results:
            async for _ in results:
                break
        sent = len(api.record)
        assert asyncio.all_tasks() == {asyncio.current_task()}, "a task of the run outlived its block"
        await asyncio.sleep(10)
        assert len(api.record) == sent < 100  # nothing more went out after the block
        assert processor.stats.unfinished > 0 and processor.stats.stop_reason == "the caller stopped reading results"

    run_virtual(main())


def test_an_exception_in_the_consumer_comes_out_as_itself() -> None:
    async def main() -> None:
        processor = Processor(settings_for("embeddings"), transport=MockTransport(MockApi()))
        async with processor.run(embedding_request(i) for i in range(100)) as results:
            async for _ in results:
                raise KeyError("the consumer's own bug")

    with pytest.raises(KeyError, match="the consumer's own bug"):
        run_virtual(main())


# -- results handed to a store (the file job's way) ---------------------------------------------------


def test_a_store_is_handed_every_result_the_moment_it_is_final_and_each_counts_once_kept() -> None:
    api = MockApi(MockConfig(latency=0.05, faults={"500": 0.1}, seed=3))
    processor = Processor(settings_for("embeddings", max_in_flight=20), transport=MockTransport(api))
    kept: list[RequestResult] = []
    done_before: list[int] = []

    def store(result: RequestResult) -> bool:
        done_before.append(processor.stats.succeeded)  # done only once kept: not counted yet
        kept.append(result)
        return True

    requests = [embedding_request(i) for i in range(200)] + [{"model": "text-embedding-3-small"}]  # no input: invalid
    run_virtual(processor.process_into(requests, store))
    assert sorted(result.index for result in kept) == list(range(1, 202))
    assert sum(result.succeeded for result in kept) == processor.stats.succeeded == 200
    assert done_before == sorted(done_before) and done_before[-1] < 200
    assert [result.kind for result in kept].count(ResultKind.INVALID) == 1 and processor.stats.unfinished == 0


def test_a_result_the_store_could_not_keep_is_left_for_a_rerun_and_the_run_stops() -> None:
    processor = Processor(settings_for("embeddings", max_in_flight=5), transport=MockTransport(MockApi(MockConfig(latency=0.01))))
    kept: list[RequestResult] = []

    def store(result: RequestResult) -> bool:
        if len(kept) == 30:
            processor.abort("the disk is full")
            return False
        kept.append(result)
        return True

    with pytest.raises(RunStopped, match="the disk is full"):
        run_virtual(processor.process_into((embedding_request(i) for i in range(1_000)), store))
    assert processor.stats.succeeded == len(kept) == 30
    assert processor.stats.unfinished > 0  # the one refused, and those in flight: a rerun sends them


def test_a_store_that_raises_aborts_the_run_with_the_cause_and_keeps_what_it_kept() -> None:
    processor = Processor(settings_for("embeddings", max_in_flight=5), transport=MockTransport(MockApi(MockConfig(latency=0.01))))
    calls = 0

    def store(result: RequestResult) -> bool:
        nonlocal calls
        calls += 1
        if calls == 10:
            raise KeyError("the store's own bug")
        return True

    with pytest.raises(RunStopped, match="storing a result failed: KeyError") as stopped:
        run_virtual(processor.process_into((embedding_request(i) for i in range(1_000)), store))
    assert isinstance(stopped.value.__cause__, KeyError)
    assert processor.stats.succeeded == 9 and calls < 20


def test_a_wait_the_api_asks_for_beyond_the_maximum_stops_the_run() -> None:
    api = MockApi(MockConfig(faults={"azure_429": 1.0}))  # "retry after 1 second"
    processor = Processor(settings_for("embeddings", retry=RetryPolicy(max_server_wait=0.5)), transport=MockTransport(api))
    results, stopped = run_virtual(collect(processor, [embedding_request(i) for i in range(3)]))
    assert results == []
    assert stopped is not None and "longer than 0.5s" in str(stopped) and "rerun later" in str(stopped)


def test_no_piece_of_the_key_survives_in_a_long_error_message_that_echoes_it() -> None:
    key = "sk-" + "K3y" * 30  # 93 characters
    echo = f"{'x' * 470} your header was Bearer {key} and that is not allowed"  # the cut at 500 falls inside the key

    def server(request: TransportRequest) -> TransportResponse:
        return json_response({"error": {"message": echo, "type": "invalid_request_error"}}, status=400)

    results, _ = run_virtual(collect(Processor(settings_for("embeddings", api_key=key), transport=server), [embedding_request(1)]))
    error = results[0].errors[0]
    assert error.startswith("HTTP 400")
    assert "K3yK3yK3y" not in error  # not even a fragment


# -- the blocking API -----------------------------------------------------------------------------------


def echo_model(request: TransportRequest) -> dict[str, Any]:
    return {"data": [{"embedding": [float(len(request.body["input"]))]}]}


def test_process_requests_sync_returns_every_result_in_a_plain_script() -> None:
    results = list(process_requests_sync((embedding_request(i) for i in range(200)), settings_for("embeddings", max_in_flight=8), transport=echo_model))
    assert sorted(result.metadata["id"] for result in results) == list(range(200))
    assert all(result.succeeded for result in results)


def test_process_requests_sync_works_inside_a_running_event_loop_as_in_a_notebook() -> None:
    async def notebook_cell() -> list[RequestResult]:
        return list(process_requests_sync([embedding_request(i) for i in range(50)], settings_for("embeddings"), transport=echo_model))

    results = asyncio.run(notebook_cell())
    assert sorted(result.metadata["id"] for result in results) == list(range(50))


def test_process_requests_sync_raises_run_stopped_and_stops_when_left_early() -> None:
    def unauthorised(request: TransportRequest) -> TransportResponse:
        return json_response({"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}, status=401)

    with pytest.raises(RunStopped, match="401"):
        list(process_requests_sync([embedding_request(i) for i in range(5)], settings_for("embeddings"), transport=unauthorised))

    sent: list[int] = []

    def counting(request: TransportRequest) -> dict[str, Any]:
        sent.append(1)
        return {"data": []}

    for _ in process_requests_sync((embedding_request(i) for i in range(100_000)), settings_for("embeddings", max_in_flight=4), transport=counting):
        break
    assert len(sent) < 100  # the run stopped with the loop, it did not read the whole input
