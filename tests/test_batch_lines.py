"""A batch never leaves a line without a row while saying all is well: an input line edited after its batch was
created, an output row under a foreign or mangled custom_id, a batch the API no longer knows (404 on every poll).

The attacker sits between the tool and the strict Files + Batches mock, in virtual time: it rewrites what the API
answers (adds output lines under ids nobody sent, forgets a batch) and edits the input between runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import IO, Any

from rate_limited_processor import Settings
from rate_limited_processor.cli import exit_code
from rate_limited_processor.jobs.batch_api import HTTPCall
from rate_limited_processor.jobs.batch_job import BatchOptions, run_batch_job
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.mock_server.responses import response_matches
from rate_limited_processor.transport.http import TransportResponse
from tests.helpers import chat_request, mock_url, read_rows, write_jsonl
from tests.virtual_time import run_virtual

QUICK: dict[str, Any] = {"batch_validation_seconds": 1.0, "batch_processing_seconds": 60.0}
SETTINGS = Settings(request_url=mock_url("chat/completions"), api_key=None)


class Meddler:
    """The mock's Batch API, with what it answers rewritten: `forget` 404s every ask after a batch; `foreign`
    adds output lines under ids nobody sent (and a wrong answer under a mangled id of each line) after the real ones."""

    def __init__(self, api: MockApi, *, forget: bool = False, foreign: bool = False) -> None:
        self.inner = MockTransport(api)
        self.forget, self.foreign = forget, foreign

    async def call(self, call: HTTPCall, sink: IO[bytes] | None = None) -> TransportResponse:
        if self.forget and call.method == "GET" and "/batches/batch_" in call.url:
            return TransportResponse(404, {"content-type": "application/json"}, b'{"error": {"message": "No batch found", "type": "invalid_request_error"}}')
        if not (self.foreign and sink is not None and call.url.endswith("/content")):
            return await self.inner.call(call, sink)
        start = sink.tell()
        answer = await self.inner.call(call, sink)
        sink.seek(start)
        real = sink.read().splitlines(keepends=True)
        forged = []
        for line in real:
            row = json.loads(line)
            number = row["custom_id"].split("-")[1]
            wrong = {**row, "custom_id": f"line-{number}-0000000000000000"}
            wrong["response"] = {"status_code": 200, "request_id": "", "body": {"choices": [{"message": {"content": "FORGED"}}]}}
            forged.append(json.dumps(wrong).encode() + b"\n")
        forged.append(b'{"custom_id": "someone-else", "response": {"status_code": 200, "body": {}}, "error": null}\n')
        sink.seek(start)
        sink.truncate()
        sink.writelines(real + forged)
        return answer

    async def aclose(self) -> None:
        return None


def run(http: Any, input_path: Path, output_path: Path, **kwargs: Any) -> Any:
    async def main() -> Any:
        return await run_batch_job(SETTINGS, input_path, output_path, options=BatchOptions(max_lines=50, poll_interval=10.0), http=http,
                                   show_progress=False, **kwargs)

    return run_virtual(main())


def ids(rows: list[Any]) -> Counter[int]:
    return Counter(row[2]["id"] for row in rows)


def test_output_lines_under_foreign_or_mangled_ids_take_no_line_s_place(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(100)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    stats = run(Meddler(MockApi(MockConfig(**QUICK)), foreign=True), input_path, tmp_path / "results.jsonl")
    rows = read_rows(tmp_path / "results.jsonl")
    assert ids(rows) == Counter(range(100)) and stats.succeeded == 100 and exit_code(stats) == 0
    assert all(response_matches("chat/completions", requests[row[2]["id"]], row[1]) for row in rows)  # never FORGED


def test_a_line_edited_after_its_batch_was_created_ends_with_a_row_and_no_exit_0(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(100)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))

    async def killed() -> Any:  # stopped while its batches run, as kill -9 would leave it (the record saved)
        asyncio.get_running_loop().call_later(15.0, os.kill, os.getpid(), signal.SIGINT)
        return await run_batch_job(SETTINGS, input_path, output_path, options=BatchOptions(max_lines=50, poll_interval=10.0),
                                   http=MockTransport(api), handle_signals=True, show_progress=False)

    assert run_virtual(killed()).stop_reason == "interrupted by SIGINT"
    requests[7]["messages"][1]["content"] = "An edited question: what is 7 + 8?"
    write_jsonl(input_path, requests)

    stats = run(MockTransport(api), input_path, output_path)  # before: a warning, no row for line 8, and exit 0, on every rerun
    rows = read_rows(output_path)
    assert ids(rows) == Counter(range(100))
    failed = [row for row in rows if isinstance(row[1], list)]
    assert [row[2]["id"] for row in failed] == [7] and "edited" in failed[0][1][0]
    assert exit_code(stats) == 1

    again = run(MockTransport(api), input_path, output_path, retry_failed=True)  # the way out the row names
    rows = read_rows(output_path)
    assert ids(rows) == Counter(range(100)) and exit_code(again) == 0
    assert next(row for row in rows if row[2]["id"] == 7)[0]["messages"][1]["content"].startswith("An edited question")


def test_a_batch_the_api_no_longer_knows_ends_its_lines_as_failures_with_the_way_out(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(100)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))
    stats = run(Meddler(api, forget=True), input_path, output_path)  # before: stopped, and so did every rerun, forever
    rows = read_rows(output_path)
    assert ids(rows) == Counter(range(100)) and exit_code(stats) == 1
    assert all("is not known to the API (HTTP 404" in row[1][0] and "--retry_failed" in row[1][0] for row in rows)

    again = run(MockTransport(api), input_path, output_path, retry_failed=True)
    assert exit_code(again) == 0 and ids(read_rows(output_path)) == Counter(range(100))
