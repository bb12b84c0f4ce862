"""`--mode batch` with a /v1/messages URL: Anthropic's Message Batches, against its strict double in virtual time.

The judges: 600 lines in batches of 250 with 3% errored and 2% expired give every line once, 3 batches, and
as many failure rows as the mock's own record says errored and expired; a run that dies after a create (its
answer never heard) is followed by a rerun that finds that batch by listing, and sends no custom_id twice.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from rate_limited_processor import Settings
from rate_limited_processor.base.errors import NoAnswer, TransportError
from rate_limited_processor.files.resume import sidecar_path
from rate_limited_processor.jobs.batch_api import HTTPCall
from rate_limited_processor.jobs.batch_job import BatchOptions, run_batch_job
from rate_limited_processor.jobs.message_batches import MessageBatchLines
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.providers.endpoints import Endpoint
from tests.helpers import MOCK_ORIGIN, read_rows, write_jsonl
from tests.virtual_time import run_virtual

QUICK: dict[str, Any] = {"batch_processing_seconds": 60.0}
MESSAGES_URL = f"{MOCK_ORIGIN}/v1/messages"


def message_request(i: int, *, model: str = "claude-haiku-4-5") -> dict[str, Any]:
    return {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": f"say {i}"}], "metadata": {"id": i}}


def run_batch(api: MockApi, input_path: Path, output_path: Path, http: Any = None, **options: Any) -> Any:
    async def main() -> Any:
        transport = MockTransport(api)
        return await run_batch_job(
            Settings(request_url=MESSAGES_URL, api_key=None), input_path, output_path, options=BatchOptions(poll_interval=10.0, **options),
            http=http or transport, transport=transport, show_progress=False,
        )

    return run_virtual(main())


def ids_of(rows: list[Any]) -> Counter[int]:
    return Counter(row[2]["id"] for row in rows)


def test_600_lines_in_batches_of_250_with_errored_and_expired_lines_are_3_batches_and_every_line_once(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [message_request(i) for i in range(600)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK, batch_failed_lines=0.03, batch_expired_lines=0.02, seed=7))

    stats = run_batch(api, input_path, output_path, max_lines=250)

    rows = read_rows(output_path)
    outcomes = api.message_batches.outcomes
    assert ids_of(rows) == Counter(range(600))
    assert len(api.message_batches.created) == 3
    assert max(api.message_batches.received.values()) == 1 and len(api.message_batches.received) == 600
    failures = [row for row in rows if len(row) > 1 and isinstance(row[1], list)]
    assert outcomes["errored"] > 0 and outcomes["expired"] > 0, outcomes
    assert len(failures) == stats.failed == outcomes["errored"] + outcomes["expired"], (len(failures), stats.failed, outcomes)
    succeeded = [row for row in rows if isinstance(row[1], dict)]
    assert all(row[1]["type"] == "message" and row[1]["content"][0]["type"] == "text" for row in succeeded)
    assert not sidecar_path(output_path, "batches").exists()


class Killed(BaseException):
    """The process dies here: nothing after it runs (what the call did is never recorded)."""


class DiesAfterCreate:
    """The mock, and a process that dies once the API has created its n-th batch, before it hears the answer."""

    def __init__(self, api: MockApi, nth: int) -> None:
        self.transport = MockTransport(api)
        self.nth, self.seen = nth, 0

    async def call(self, call: Any, sink: Any = None) -> Any:
        answer = await self.transport.call(call, sink)
        if call.method == "POST" and call.url.endswith("/v1/messages/batches"):
            self.seen += 1
            if self.seen == self.nth:
                raise Killed
        return answer


@pytest.mark.parametrize("nth", [1, 2])
def test_a_run_that_dies_while_a_create_is_answered_is_followed_by_a_rerun_that_finds_that_batch_and_sends_no_line_twice(
    tmp_path: Path, nth: int
) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [message_request(i) for i in range(300)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))

    with pytest.raises(Killed):
        run_batch(api, input_path, output_path, http=DiesAfterCreate(api, nth), max_lines=100)
    assert len(api.message_batches.created) == nth
    record = json.loads(sidecar_path(output_path, "batches").read_text())
    assert [bool(part["batch_ids"]) for part in record["parts"]][:nth] == [True] * (nth - 1) + [False], "the last create's id was never heard"

    run_batch(api, input_path, output_path, max_lines=100)

    assert ids_of(read_rows(output_path)) == Counter(range(300))
    assert len(api.message_batches.created) == 3, "the batch the dead run created was found, not created again"
    assert len(api.message_batches.received) == 300 and max(api.message_batches.received.values()) == 1


def test_a_look_alike_batch_of_someone_elses_is_waited_for_proved_not_the_parts_and_left_alone(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [message_request(i) for i in range(100)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))
    with pytest.raises(Killed):  # the create's request died before it reached the API...
        run_batch(api, input_path, output_path, http=DiesBeforeCreate(api), max_lines=100)
    assert api.message_batches.created == []

    async def someone_else() -> None:  # ...and another client made a batch of the same size meanwhile
        params = [{name: value for name, value in message_request(i).items() if name != "metadata"} for i in range(100)]
        body = {"requests": [{"custom_id": f"theirs-{i}", "params": params[i]} for i in range(100)]}
        headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
        answer = await MockTransport(api).call(HTTPCall("POST", f"{MOCK_ORIGIN}/v1/messages/batches", headers, json.dumps(body).encode()))
        assert answer.status == 200, answer.body

    run_virtual(someone_else())
    stats = run_batch(api, input_path, output_path, max_lines=100)

    assert ids_of(read_rows(output_path)) == Counter(range(100))
    assert (stats.succeeded, stats.failed) == (100, 0), "every row from the part's own batch, none from the look-alike"
    theirs, ours = api.message_batches.created
    assert api.message_batches._batches[theirs].status == "ended" and api.message_batches.outcomes["canceled"] == 0, "never cancelled"
    assert len(api.message_batches.received) == 200 and max(api.message_batches.received.values()) == 1
    assert not sidecar_path(output_path, "batches").exists()


class DiesBeforeCreate:
    """A process that dies as it sends its first create: the request never reaches the API."""

    def __init__(self, api: MockApi) -> None:
        self.transport = MockTransport(api)

    async def call(self, call: Any, sink: Any = None) -> Any:
        if call.method == "POST" and call.url.endswith("/v1/messages/batches"):
            raise Killed
        return await self.transport.call(call, sink)


@pytest.mark.parametrize("fallback", ["none", "online"])
def test_errored_and_expired_lines_are_failure_rows_or_go_online(tmp_path: Path, fallback: str) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [message_request(i) for i in range(200)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK, batch_failed_lines=0.05, batch_expired_lines=0.05, seed=3))

    stats = run_batch(api, input_path, output_path, max_lines=100, fallback=fallback)

    rows = read_rows(output_path)
    outcomes = api.message_batches.outcomes
    failed = outcomes["errored"] + outcomes["expired"]
    assert ids_of(rows) == Counter(range(200)) and failed > 0
    if fallback == "none":
        assert stats.failed == failed
        reasons = {row[1][0].split(":")[0] for row in rows if isinstance(row[1], list)}
        assert reasons == {"errored", "expired"}, reasons
    else:
        assert stats.failed == 0 and api.record.summary()["total"] == failed, "the lines the batches failed went online, once each"


def test_a_bad_line_is_an_errored_result_and_a_line_for_another_endpoint_is_refused_before_sending(tmp_path: Path) -> None:
    lines = [message_request(0), {**message_request(1), "stream_options": {}}, {"model": "m", "input": "x", "url": "/v1/embeddings", "metadata": {"id": 2}}]
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))

    run_batch(api, input_path, output_path)

    rows = {row[2]["id"]: row for row in read_rows(output_path)}
    assert isinstance(rows[0][1], dict) and rows[0][1]["type"] == "message"
    assert rows[1][1][0].startswith("errored: invalid_request_error: stream_options"), rows[1]
    assert rows[2][1][0].startswith("line 3: missing required field 'messages'"), rows[2]
    assert len(api.message_batches.received) == 2, "the line that cannot be a Messages request was never sent"
    assert MessageBatchLines.refusal(cast(Any, None), Endpoint.EMBEDDINGS) is not None and MessageBatchLines.refusal(cast(Any, None), Endpoint.MESSAGES) is None


class LosesCreateAnswers:
    """The mock behind a network that loses the first create: after it reached the API (`reached`) or before."""

    def __init__(self, api: MockApi, *, reached: bool) -> None:
        self.transport = MockTransport(api)
        self.reached, self.lost = reached, 0

    async def call(self, call: Any, sink: Any = None) -> Any:
        creating = call.method == "POST" and call.url.endswith("/v1/messages/batches")
        if creating and not self.lost:
            self.lost += 1
            if self.reached:
                await self.transport.call(call, sink)
            raise TransportError(NoAnswer.BROKEN, "ClientOSError: [Errno 104] Connection reset by peer")
        return await self.transport.call(call, sink)


@pytest.mark.parametrize("reached", [True, False], ids=["made-then-lost", "lost-on-the-way"])
def test_a_create_that_gets_no_answer_is_looked_for_before_it_is_tried_again(tmp_path: Path, reached: bool) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [message_request(i) for i in range(150)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))

    stats = run_batch(api, input_path, output_path, http=LosesCreateAnswers(api, reached=reached), max_lines=100)

    assert stats.stop_reason is None and ids_of(read_rows(output_path)) == Counter(range(150))
    assert len(api.message_batches.created) == 2 and max(api.message_batches.received.values()) == 1


def test_every_batch_call_carries_the_key_in_x_api_key_and_the_version_header(tmp_path: Path) -> None:
    key = "sk-ant-test-0123456789abcdef"
    input_path = write_jsonl(tmp_path / "requests.jsonl", [message_request(i) for i in range(20)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK, api_key=key))
    seen: list[dict[str, str]] = []

    class Watched(MockTransport):
        async def call(self, call: Any, sink: Any = None) -> Any:
            seen.append({name.lower(): value for name, value in call.headers.items()})
            return await super().call(call, sink)

    async def main() -> Any:
        return await run_batch_job(
            Settings(request_url=MESSAGES_URL, api_key=key), input_path, output_path, options=BatchOptions(poll_interval=10.0),
            http=Watched(api), show_progress=False,
        )

    stats = run_virtual(main())
    assert (stats.succeeded, stats.stop_reason) == (20, None)
    assert seen and all(headers.get("x-api-key") == key and headers.get("anthropic-version") == "2023-06-01" for headers in seen)
    assert all("authorization" not in headers for headers in seen)
