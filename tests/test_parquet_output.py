"""--output_format parquet: a directory of part files, embeddings as float32, resumable like JSONL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rate_limited_processor import UNLIMITED, Settings, run_file_job
from rate_limited_processor.base.errors import ResumeError
from rate_limited_processor.mock_server import MockConfig, MockServer, embedding_for
from tests.helpers import FAST_RETRY, chat_request, embedding_request, run_cli, write_jsonl

pa = pytest.importorskip("pyarrow", reason="the parquet extra (pyarrow) is not installed")
import pyarrow.parquet as pq  # noqa: E402

from rate_limited_processor.files.parquet import ParquetResultWriter, prepare_parquet_results, read_parquet_rows  # noqa: E402


def settings_for(server: MockServer, endpoint: str = "embeddings") -> Settings:
    return Settings(request_url=server.url(endpoint), api_key=None, limits=UNLIMITED, retry=FAST_RETRY)


async def test_embeddings_are_float32_lists_and_every_request_has_one_row(tmp_path: Path) -> None:
    requests = write_jsonl(tmp_path / "requests.jsonl", [embedding_request(i) for i in range(250)])
    results = tmp_path / "results.parquet"
    async with MockServer(MockConfig()) as server:
        stats = await run_file_job(settings_for(server), requests, results, show_progress=False, output_format="parquet")
    assert stats.succeeded == 250
    table = pq.read_table(results)
    assert table.num_rows == 250
    assert table.schema.field("embeddings").type == pa.list_(pa.list_(pa.float32()))
    rows = {json.loads(row["metadata"])["id"]: row for row in table.to_pylist()}
    assert sorted(rows) == list(range(250))
    row = rows[7]
    assert row["failed"] is False and row["errors"] is None and row["status"] == 200
    assert json.loads(row["request"]) == {key: value for key, value in embedding_request(7).items() if key != "metadata"}
    expected = embedding_for(embedding_request(7)["input"])
    assert row["embeddings"][0] == pytest.approx(expected, abs=1e-6)
    response = json.loads(row["response"])
    assert "embedding" not in response["data"][0] and response["data"][0]["index"] == 0  # the vector is in its column only


async def test_a_rerun_sends_only_what_has_no_row_and_reads_only_the_id_columns(tmp_path: Path) -> None:
    lines = [embedding_request(i) for i in range(300)]
    results = tmp_path / "results.parquet"
    async with MockServer(MockConfig()) as server:
        await run_file_job(settings_for(server), write_jsonl(tmp_path / "first.jsonl", lines[:120]), results, show_progress=False, output_format="parquet")
        served_before = len(server.record.entries)
        stats = await run_file_job(settings_for(server), write_jsonl(tmp_path / "all.jsonl", lines), results, show_progress=False, output_format="parquet")
        assert len(server.record.entries) - served_before == 180
    assert stats.already_done == 120 and stats.succeeded == 180
    ids = sorted(json.loads(row["metadata"])["id"] for row in read_parquet_rows(results))
    assert ids == list(range(300))
    assert len(os.listdir(results)) == 2  # one part per run here (each run's rows fit one row group)


async def test_failure_rows_count_as_done_and_retry_failed_sends_them_again(tmp_path: Path) -> None:
    requests = write_jsonl(tmp_path / "requests.jsonl", [chat_request(i) for i in range(100)])
    results = tmp_path / "results.parquet"
    async with MockServer(MockConfig(faults={"too_large": 0.2}, seed=3)) as server:
        first = await run_file_job(settings_for(server, "chat/completions"), requests, results, show_progress=False, output_format="parquet")
    assert first.failed > 0
    failed_rows = [row for row in read_parquet_rows(results) if row["failed"]]
    assert len(failed_rows) == first.failed and all(row["errors"] and row["status"] == 429 for row in failed_rows)
    done, report = prepare_parquet_results(results, repair=False)
    assert len(done) == 100 and report.failure_rows == first.failed
    async with MockServer(MockConfig()) as server:
        again = await run_file_job(
            settings_for(server, "chat/completions"), requests, results, show_progress=False, output_format="parquet", retry_failed=True,
        )
        assert len(server.record.entries) == first.failed
    assert again.succeeded == first.failed
    rows = list(read_parquet_rows(results))
    assert len(rows) == 100 and not any(row["failed"] for row in rows)


def test_row_groups_are_written_as_they_fill_each_a_whole_file(tmp_path: Path) -> None:
    """Rows beyond a group go to the next part; a killed run's temporary file is removed, and a foreign file refused."""
    from rate_limited_processor.base.models import RequestResult, ResultKind

    results = tmp_path / "results.parquet"
    with ParquetResultWriter(results, rows_per_group=40) as writer:
        for i in range(100):
            body = {"model": "text-embedding-3-small", "input": f"text {i}"}
            response = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25, float(i)]}]}
            writer.write(RequestResult(i, body, {"id": i}, response=response, errors=(), attempts=1, kind=ResultKind.SUCCEEDED, status=200))
            if i == 45:
                assert sorted(os.listdir(results)) == ["part-000001.parquet"]  # the first 40 are on disk already
    assert sorted(os.listdir(results)) == ["part-000001.parquet", "part-000002.parquet", "part-000003.parquet"]
    assert [len(pq.read_table(results / name)) for name in sorted(os.listdir(results))] == [40, 40, 20]
    (results / ".part-000004.parquet.tmp").write_bytes(b"PAR1 half a file")
    done, report = prepare_parquet_results(results)
    assert len(done) == 100 and report.repaired_torn_line and not (results / ".part-000004.parquet.tmp").exists()
    (results / "notes.txt").write_text("mine")
    with pytest.raises(ResumeError, match="notes.txt"):
        prepare_parquet_results(results)


async def test_the_command_writes_parquet_and_refuses_a_file_as_its_directory(tmp_path: Path) -> None:
    requests = write_jsonl(tmp_path / "requests.jsonl", [embedding_request(i) for i in range(20)])
    async with MockServer(MockConfig()) as server:
        code, _, stderr = await run_cli(
            "--requests_filepath", str(requests), "--save_filepath", str(tmp_path / "out.parquet"), "--request_url", server.url("embeddings"),
            "--output_format", "parquet", "--max_requests_per_minute", "100000", "--max_tokens_per_minute", "100000000",
        )
        assert code == 0, stderr
        assert pq.read_table(tmp_path / "out.parquet").num_rows == 20
        a_file = tmp_path / "a_file.parquet"
        a_file.write_text("")
        code, _, stderr = await run_cli(
            "--requests_filepath", str(requests), "--save_filepath", str(a_file), "--request_url", server.url("embeddings"), "--output_format", "parquet",
        )
        assert code == 2 and "not a directory" in stderr
