"""`--mode batch` against the strict Files + Batches mock, in virtual time: parts, rows, resume, limits, failures.

The mock runs each batch's lines as its online endpoints answer them (the same echo), on the test's virtual
clock, so a batch's minutes of processing and the client's polling take milliseconds.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Settings
from rate_limited_processor.batch_mode import BatchOptions, run_batch_job
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.mock_server.responses import response_matches
from rate_limited_processor.resume import sidecar_path
from tests.helpers import chat_request, embedding_request, mock_url, read_rows, write_jsonl
from tests.virtual_time import run_virtual

#: Quick batches: they validate in a second and end a minute after they are created.
QUICK = {"batch_validation_seconds": 1.0, "batch_processing_seconds": 60.0}


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


def test_each_uploaded_file_holds_one_model_and_at_most_the_line_limit(tmp_path: Path) -> None:
    requests = [{**chat_request(i), "model": "gpt-4o-mini" if i % 3 else "gpt-4o"} for i in range(700)]
    input_path = write_jsonl(tmp_path / "requests.jsonl", requests)
    api = MockApi(MockConfig(**QUICK))

    run_batch(api, input_path, tmp_path / "results.jsonl", max_lines=300)

    files = [api.batches._files[file_id] for file_id in api.batches.uploads]
    models = [{json.loads(line)["body"]["model"] for line in file.content.splitlines()} for file in files]
    sizes = sorted(len(file.content.splitlines()) for file in files)
    assert all(len(found) == 1 for found in models)
    assert sizes == [166, 234, 300], sizes  # 466 gpt-4o-mini lines in 300 + 166; the 234 gpt-4o lines in one
    assert ids_of(read_rows(tmp_path / "results.jsonl")) == Counter(range(700))


@pytest.mark.parametrize("output_format", ["batch"])
def test_batch_input_gets_batch_output_rows_with_its_own_custom_ids(tmp_path: Path, output_format: str) -> None:
    lines = [{"custom_id": f"task-{i}", "method": "POST", "url": "/v1/embeddings", "body": embedding_request(i) | {"metadata": None}} for i in range(30)]
    for line in lines:
        del line["body"]["metadata"]
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)
    output_path = tmp_path / "results.jsonl"
    api = MockApi(MockConfig(**QUICK))

    run_batch(api, input_path, output_path, settings=settings_for("embeddings"))

    rows = read_rows(output_path)
    assert sorted(row["custom_id"] for row in rows) == sorted(f"task-{i}" for i in range(30))
    assert all(row["response"]["status_code"] == 200 and row["response"]["body"]["data"] for row in rows)
