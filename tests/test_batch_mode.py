"""`--mode batch` against the strict Files + Batches mock, in virtual time: parts, rows, resume, limits, failures.

The mock runs each batch's lines as its online endpoints answer them (the same echo), on the test's virtual
clock, so a batch's minutes of processing and the client's polling take milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Settings
from rate_limited_processor.core.budget import Budget
from rate_limited_processor.core.costs import PriceBook
from rate_limited_processor.files.resume import prepare_results_file, sidecar_path
from rate_limited_processor.jobs.batch_job import BatchOptions, run_batch_job
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.mock_server.responses import response_matches
from tests.helpers import MOCK_ORIGIN, chat_request, embedding_request, mock_url, read_rows, write_jsonl
from tests.virtual_time import run_virtual

#: Quick batches: they validate in a second and end a minute after they are created.
QUICK: dict[str, Any] = {"batch_validation_seconds": 1.0, "batch_processing_seconds": 60.0}


def settings_for(endpoint: str = "chat/completions", **overrides: Any) -> Settings:
    return Settings(**{"request_url": mock_url(endpoint), "api_key": None, **overrides})


def run_batch(api: MockApi, input_path: Path, output_path: Path, *, settings: Settings | None = None, **options: Any) -> Any:
    async def main() -> Any:
        transport = MockTransport(api)
        return await run_batch_job(
            settings or settings_for(), input_path, output_path, options=BatchOptions(poll_interval=10.0, **options), http=transport,
            transport=transport, show_progress=False,
        )

    return run_virtual(main())


def body_of(request: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in request.items() if name != "metadata"}


def ids_of(rows: list[Any]) -> Counter[int]:
    return Counter(row[2]["id"] for row in rows)


def test_2000_lines_in_parts_of_500_are_4_batches_and_every_line_gets_its_answer_once(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(2_000)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))

    stats = run_batch(api, input_path, output_path, max_lines=500)

    rows = read_rows(output_path)
    assert ids_of(rows) == Counter(range(2_000))
    assert all(response_matches("chat/completions", requests[row[2]["id"]], row[1]) for row in rows)
    assert len(api.batches.created) == 4 and len(api.batches.uploads) == 4
    assert (stats.succeeded, stats.failed, stats.stop_reason) == (2_000, 0, None)
    assert not sidecar_path(output_path, "batches").exists(), "a finished job leaves no batch record behind"
    report = prepare_results_file(output_path)[1]
    assert (report.rows, report.rows_read) == (2_000, 0), "the resume index vouches for every row batch mode wrote"


def test_each_uploaded_file_holds_one_model_and_at_most_the_line_limit(tmp_path: Path) -> None:
    requests = [{**chat_request(i), "model": "gpt-4o-mini" if i % 3 else "gpt-4o"} for i in range(70)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    api = MockApi(MockConfig(**QUICK))

    run_batch(api, input_path, tmp_path / "results.jsonl", max_lines=30)

    files = [api.batches._files[file_id] for file_id in api.batches.uploads]
    models = [{json.loads(line)["body"]["model"] for line in file.content.splitlines()} for file in files]
    sizes = sorted(len(file.content.splitlines()) for file in files)
    assert all(len(found) == 1 for found in models)
    assert sizes == [16, 24, 30], sizes  # 46 gpt-4o-mini lines in 30 + 16; the 24 gpt-4o lines in one
    assert ids_of(read_rows(tmp_path / "results.jsonl")) == Counter(range(70))


def test_batch_input_gets_batch_output_rows_with_its_own_custom_ids(tmp_path: Path) -> None:
    bodies = [{name: value for name, value in embedding_request(i).items() if name != "metadata"} for i in range(30)]
    lines = [{"custom_id": f"task-{i}", "method": "POST", "url": "/v1/embeddings", "body": body} for i, body in enumerate(bodies)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))

    run_batch(api, input_path, output_path, settings=settings_for("embeddings"))

    rows = read_rows(output_path)
    assert sorted(row["custom_id"] for row in rows) == sorted(f"task-{i}" for i in range(30))
    assert all(row["response"]["status_code"] == 200 and row["response"]["body"]["data"] for row in rows)


class Killed(BaseException):
    """The process dies here: nothing after it runs (no record of what the call did is written)."""


class DiesAfter:
    """The mock, and a process that dies right after the API has done the n-th call of a kind (before it hears back)."""

    def __init__(self, api: MockApi, method: str, path: str, nth: int) -> None:
        self.transport = MockTransport(api)
        self.method, self.path, self.nth = method, path, nth
        self.seen = 0

    async def call(self, call: Any, sink: Any = None) -> Any:
        answer = await self.transport.call(call, sink)
        if (call.method, call.url.partition("?")[0].removeprefix("http://mock.invalid")) == (self.method, self.path):
            self.seen += 1
            if self.seen == self.nth:
                raise Killed
        return answer


@pytest.mark.parametrize("method, path", [("POST", "/v1/files"), ("POST", "/v1/batches")])
def test_a_run_that_dies_before_it_records_an_upload_or_a_batch_never_makes_it_twice(tmp_path: Path, method: str, path: str) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(200)])
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))
    dying = DiesAfter(api, method, path, nth=2)

    async def first() -> None:
        await run_batch_job(settings_for(), input_path, output_path, options=BatchOptions(max_lines=50, poll_interval=10.0), http=dying, show_progress=False)

    with pytest.raises(Killed):
        run_virtual(first())
    assert len(api.batches.uploads) == 2 and len(api.batches.created) == (2 if path.endswith("batches") else 1)

    run_batch(api, input_path, output_path, max_lines=50)

    assert ids_of(read_rows(output_path)) == Counter(range(200))
    assert (len(api.batches.uploads), len(api.batches.created)) == (4, 4), "the part the dead run sent was found, not sent again"


def test_a_batch_made_unrecorded_is_found_even_when_a_line_of_its_part_became_unreadable_before_the_rerun(tmp_path: Path) -> None:
    """A part with fewer lines to send than it holds (one now a failure row) is still the part a dead run created a
    batch for: found by its token and collected, none of its lines sent online (nor another batch made)."""
    requests = [chat_request(i) for i in range(200)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))

    async def first() -> None:
        dying = DiesAfter(api, "POST", "/v1/batches", nth=2)
        await run_batch_job(settings_for(), input_path, output_path, options=BatchOptions(max_lines=50, poll_interval=10.0), http=dying, show_progress=False)

    with pytest.raises(Killed):
        run_virtual(first())
    lines = input_path.read_text().splitlines()
    lines[59] = "{damaged"  # line 60, in part 2, whose batch the API made and the dead run never heard of
    input_path.write_text("\n".join(lines) + "\n")

    run_batch(api, input_path, output_path, max_lines=50)

    rows = read_rows(output_path)
    answered = [row for row in rows if len(row) > 2]
    assert len(rows) == 200 and ids_of(answered) == Counter(i for i in range(200) if i != 59), "the damaged line: a failure row"
    assert (len(api.batches.uploads), len(api.batches.created)) == (4, 4), "part 2's batch was found, not made again"
    assert api.record.count(200) == 0, "no line went online"


def test_a_batch_refused_for_the_enqueued_token_limit_waits_for_an_earlier_one_and_is_created_again_from_its_file(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(150)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    # A part of 50 lines holds 50 x (27 + 8) = 1,750 tokens as the mock counts them: two fit under the limit, not three.
    api = MockApi(MockConfig(**QUICK, batch_enqueued_token_limit=3_600))

    stats = run_batch(api, input_path, output_path, max_lines=50)

    assert ids_of(read_rows(output_path)) == Counter(range(150))
    assert stats.stop_reason is None
    assert len(api.batches.uploads) == 3, "a refused part is created again from the file it uploaded"
    refused = [batch for batch in api.batches._batches.values() if batch.errors]
    assert refused and all(error["code"] == "token_limit_exceeded" for batch in refused for error in batch.errors)
    assert len(api.batches.created) == 3 + len(refused)


def test_a_part_too_large_for_the_enqueued_limit_on_its_own_stops_the_run_and_says_what_to_do(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(100)])
    api = MockApi(MockConfig(**QUICK, batch_enqueued_token_limit=100))

    stats = run_batch(api, input_path, tmp_path / "results.jsonl")

    assert stats.stop_reason is not None and "enqueued-token limit" in stats.stop_reason and "--batch_max_lines" in stats.stop_reason
    assert not (tmp_path / "results.jsonl").read_text()


@pytest.mark.parametrize("fallback", ["none", "online"])
def test_lines_a_batch_failed_or_let_expire_are_failure_rows_or_are_sent_online(tmp_path: Path, fallback: str) -> None:
    requests = [chat_request(i) for i in range(200)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK, batch_failed_lines=0.1, batch_expired_lines=0.1, seed=3))

    stats = run_batch(api, input_path, output_path, max_lines=50, fallback=fallback)

    rows = read_rows(output_path)
    assert ids_of(rows) == Counter(range(200))
    failures = [row for row in rows if isinstance(row[1], list)]
    if fallback == "none":
        reasons = Counter(row[1][0].split(" ")[0].rstrip(":") for row in failures)
        assert set(reasons) == {"HTTP", "batch_expired"} and 15 <= len(failures) <= 65, reasons
        assert stats.failed == len(failures) and len(api.record) == 0, "nothing was sent online"
        assert {batch.status for batch in api.batches._batches.values()} == {"expired"}
    else:
        assert failures == []
        sent_online = len(api.record)
        assert 15 <= sent_online <= 65 and api.record.served_ok_keys().most_common(1)[0][1] == 1
        assert stats.succeeded == 200


def test_ctrl_c_leaves_the_batches_running_says_how_to_collect_or_cancel_them_and_a_rerun_collects_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(200)])
    output_path = tmp_path / "results.jsonl"
    key = "sk-batch-mode-secret-key-0123456789"
    api = MockApi(MockConfig(**QUICK, api_key=key))

    async def interrupted() -> Any:
        asyncio.get_running_loop().call_later(15.0, os.kill, os.getpid(), signal.SIGINT)  # while the batches run
        transport = MockTransport(api)
        options = BatchOptions(max_lines=50, poll_interval=10.0)
        settings = settings_for(api_key=key)
        return await run_batch_job(settings, input_path, output_path, options=options, http=transport, handle_signals=True, show_progress=False)

    stats = run_virtual(interrupted())

    assert stats.stop_reason == "interrupted by SIGINT"
    assert read_rows(output_path) == [] and stats.unfinished == 200
    told = caplog.text
    assert "4 batches left running at the API" in told and "rerun the same command to collect their results" in told
    for batch_id in api.batches.created:
        assert f"curl -X POST {MOCK_ORIGIN}/v1/batches/{batch_id}/cancel" in told
    assert {batch.status for batch in api.batches._batches.values()} == {"in_progress"}, "nothing was cancelled"
    record = sidecar_path(output_path, "batches").read_text()
    assert all(batch_id in record for batch_id in api.batches.created)
    assert key not in record and key not in told and "$OPENAI_API_KEY" in told, "the key is named by its variable, never shown"

    run_batch(api, input_path, output_path, max_lines=50, settings=settings_for(api_key=key))

    assert ids_of(read_rows(output_path)) == Counter(range(200))
    assert (len(api.batches.uploads), len(api.batches.created)) == (4, 4)


def test_a_part_is_cut_at_the_byte_limit_too_and_no_uploaded_file_passes_it(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(40)])
    api = MockApi(MockConfig(**QUICK))
    limit = 2_000  # a few lines' worth

    run_batch(api, input_path, tmp_path / "results.jsonl", max_bytes=limit)

    sizes = [len(api.batches._files[file_id].content) for file_id in api.batches.uploads]
    assert all(size <= limit for size in sizes) and max(sizes) > limit * 0.8, sizes
    assert ids_of(read_rows(tmp_path / "results.jsonl")) == Counter(range(40))


def test_with_a_budget_a_part_is_sent_only_when_its_estimate_at_batch_prices_fits_and_a_rerun_with_more_finishes(tmp_path: Path) -> None:
    requests = [chat_request(i) for i in range(200)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))
    prices = PriceBook(request_url=mock_url(), batch=True)
    part_estimate = Budget(1.0, prices).estimate(body_of(requests[0]), 35 - 8, 8) or 0.0  # 35 tokens, of them max_tokens 8
    part_estimate *= 50  # 50 lines a part, all alike but for their numbers

    async def main(limit: float) -> Any:
        transport = MockTransport(api)
        options = BatchOptions(max_lines=50, poll_interval=10.0)
        budget = Budget(limit, prices)
        return await run_batch_job(settings_for(), input_path, output_path, options=options, http=transport, budget=budget, prices=prices, show_progress=False)

    stats = run_virtual(main(1.5 * part_estimate))

    assert stats.stop_reason is not None and "--max_cost_usd" in stats.stop_reason
    assert len(api.batches.created) == 1, "the second part did not fit beside what the first cost"
    assert ids_of(read_rows(output_path)) == Counter(range(50))

    stats = run_virtual(main(10 * part_estimate))

    assert stats.stop_reason is None and ids_of(read_rows(output_path)) == Counter(range(200))
    assert len(api.batches.created) == 4
