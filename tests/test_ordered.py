"""--ordered: results in input order, with a reorder buffer that stays within its window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rate_limited_processor import UNLIMITED, Processor, Settings, run_file_job
from rate_limited_processor.base.models import RequestResult, ResultKind
from rate_limited_processor.jobs.file_job import Reorder
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from tests.helpers import embedding_request, mock_url, read_rows, write_jsonl
from tests.virtual_time import run_virtual


def settings_for(endpoint: str, **overrides: Any) -> Settings:
    return Settings(**{"request_url": mock_url(endpoint), "api_key": None, "limits": UNLIMITED, **overrides})


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


def test_ordered_output_follows_the_input_despite_jitter_and_retries(tmp_path: Path) -> None:
    lines: list[object] = [embedding_request(i) for i in range(300)]
    lines.insert(50, "not json")  # a rejected line keeps its place too
    input_path = write_jsonl(tmp_path / "in.jsonl", lines)
    output_path = tmp_path / "out.jsonl"
    api = MockApi(MockConfig(latency=0.01, latency_jitter=0.2, faults={"500": 0.1}, seed=3))
    job = run_file_job(settings_for("embeddings"), input_path, output_path, show_progress=False, transport=MockTransport(api), ordered=True, ordered_window=40)
    stats = run_virtual(job)
    assert stats.invalid == 1 and stats.succeeded == 300
    rows = read_rows(output_path)
    assert rows[50] == ["not json", ["line 51: not valid JSON (Expecting value at column 1)"]]
    assert [row[2]["id"] for row in rows if len(row) == 3] == list(range(300))


def test_the_reorder_window_bounds_how_far_the_run_reads_ahead_of_a_slow_request() -> None:
    held: list[int] = []

    class Spy(Reorder):
        def add(self, result: RequestResult) -> list[RequestResult]:
            ready = super().add(result)
            held.append(len(self))
            return ready

    api = MockApi(MockConfig(faults={"hang": 0.02}, seed=4))
    processor = Processor(settings_for("embeddings", request_timeout=30), transport=MockTransport(api), max_ahead=25)

    async def main() -> list[int]:
        reorder = Spy()
        written: list[int] = []
        async with processor.run(embedding_request(i) for i in range(400)) as results:
            async for result in results:
                written.extend(r.position for r in reorder.add(result) if r.position is not None)
        return written

    assert run_virtual(main()) == list(range(400))
    assert api.record.count("hang") > 0
    assert max(held) <= 25  # a hung request held up at most the window, never the whole input
    assert max(held) >= 10  # and the window was really used while one hung


def test_ordered_library_job_writes_in_order(tmp_path: Path) -> None:
    input_path = write_jsonl(tmp_path / "in.jsonl", [embedding_request(i) for i in range(100)])
    api = MockApi(MockConfig(latency_jitter=0.05, seed=1))
    output_path = tmp_path / "out.jsonl"
    job = run_file_job(settings_for("embeddings"), input_path, output_path, show_progress=False, transport=MockTransport(api), ordered=True, ordered_window=10)
    run_virtual(job)
    assert [row[2]["id"] for row in read_rows(output_path)] == list(range(100))
