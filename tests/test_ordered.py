"""--ordered: results in input order, with a reorder buffer that stays within its window."""

from __future__ import annotations

from pathlib import Path

from rate_limited_processor import UNLIMITED, Processor, RetryPolicy, Settings, run_file_job
from rate_limited_processor.job import Reorder
from rate_limited_processor.mock_server import MockConfig, MockServer
from rate_limited_processor.models import RequestResult, ResultKind
from tests.helpers import embedding_request, read_rows, run_cli, write_jsonl


def result_at(position: int) -> RequestResult:
    return RequestResult(position + 1, {}, None, {"ok": True}, (), attempts=1, kind=ResultKind.SUCCEEDED, position=position)


def test_reorder_releases_consecutive_results_and_drains_the_rest_in_order() -> None:
    reorder = Reorder()
    assert reorder.add(result_at(1)) == [] and reorder.add(result_at(3)) == []
    assert [r.position for r in reorder.add(result_at(0))] == [0, 1]
    assert len(reorder) == 1
    assert [r.position for r in reorder.add(result_at(2))] == [2, 3]
    reorder.add(result_at(6))
    reorder.add(result_at(5))
    assert [r.position for r in reorder.drain()] == [5, 6]


async def test_ordered_output_follows_the_input_despite_jitter_and_retries(tmp_path: Path) -> None:
    lines: list[object] = [embedding_request(i) for i in range(300)]
    lines.insert(50, "not json")  # a rejected line keeps its place too
    input_path = write_jsonl(tmp_path / "in.jsonl", lines)
    output_path = tmp_path / "out.jsonl"
    async with MockServer(MockConfig(latency=0.01, latency_jitter=0.2, faults={"500": 0.1}, seed=3)) as server:
        code, _, stderr = await run_cli(
            "--requests_filepath", str(input_path), "--save_filepath", str(output_path),
            "--request_url", server.url("embeddings"), "--ordered", "--ordered_window", "40",
        )
    assert code == 1, stderr  # the bad line
    rows = read_rows(output_path)
    assert rows[50] == ["not json", ["line 51: not valid JSON (Expecting value at column 1)"]]
    assert [row[2]["id"] for row in rows if len(row) == 3] == list(range(300))


async def test_the_reorder_window_bounds_how_far_the_run_reads_ahead_of_a_slow_request() -> None:
    held: list[int] = []

    class Spy(Reorder):
        def add(self, result: RequestResult) -> list[RequestResult]:
            ready = super().add(result)
            held.append(len(self))
            return ready

    async with MockServer(MockConfig(latency=0.0, faults={"hang": 0.02}, seed=4)) as server:
        settings = Settings(request_url=server.url("embeddings"), limits=UNLIMITED, request_timeout=0.3,
                            retry=RetryPolicy(max_attempts=5, initial_delay=0.01, max_delay=0.02))
        processor = Processor(settings, max_ahead=25)
        reorder = Spy()
        written = []
        async for result in processor.process(embedding_request(i) for i in range(400)):
            written.extend(r.position for r in reorder.add(result))
    assert written == list(range(400))
    assert max(held) <= 25  # a hung request held up at most the window, never the whole input
    assert max(held) >= 10  # and the window was really used while one hung


async def test_ordered_library_job_writes_in_order(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "in.jsonl", [embedding_request(i) for i in range(100)])
    async with MockServer(MockConfig(latency_jitter=0.05, seed=1)) as server:
        settings = Settings(request_url=server.url("embeddings"), limits=UNLIMITED)
        await run_file_job(settings, input_path, tmp_path / "out.jsonl", show_progress=False, ordered=True, ordered_window=10)
    assert [row[2]["id"] for row in read_rows(tmp_path / "out.jsonl")] == list(range(100))
