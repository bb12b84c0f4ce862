"""The resume index beside a results file: a rerun reads no row it vouches for, and never trusts a wrong one.

Each case builds a results file as a run does (prepare, then the writer with its index), changes the file
or the index the way a crash, an older version, a user or another program would, and checks two things:
the done set is exactly what a full read of the file gives, and how many rows had to be read for it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rate_limited_processor.base.errors import ResumeError
from rate_limited_processor.base.models import RequestResult, ResultKind
from rate_limited_processor.files import resume
from rate_limited_processor.files.request_io import ResultWriter
from rate_limited_processor.files.resume import DoneIndex, IndexWriter, identity, prepare_results_file
from tests.helpers import read_rows


def success(i: int, size: int = 1) -> RequestResult:
    return RequestResult(i, {"input": f"text {i}"}, {"id": i}, {"data": [{"embedding": [0.5] * size}]}, (), attempts=1, kind=ResultKind.SUCCEEDED)


def failure(i: int) -> RequestResult:
    return RequestResult(i, {"input": f"text {i}"}, {"id": i}, None, ("HTTP 400: bad",), attempts=1, kind=ResultKind.FAILED)


def run(path: Path, results: list[RequestResult], output_format: str = "cookbook") -> None:
    """What a run does: prepare the file (and its index), then append rows with the index."""
    prepare_results_file(path)
    with ResultWriter(path, output_format, index=True) as writer:  # type: ignore[arg-type]
        for result in results:
            writer.write(result)


def done_ids(index: DoneIndex, upto: int = 20) -> list[int]:
    """Which of the requests 0..upto-1 the index says are done (claims them)."""
    return [i for i in range(upto) if index.claim(identity({"input": f"text {i}"}, {"id": i}))]


def index_of(path: Path) -> Path:
    return path.with_name(path.name + ".index")


def test_a_rerun_reads_no_row_the_index_vouches_for(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    run(path, [success(i, size=100) for i in range(5)] + [failure(5)])
    index, report = prepare_results_file(path)
    assert report.rows_read == 0
    assert (report.rows, report.failure_rows) == (6, 1)
    assert done_ids(index) == [0, 1, 2, 3, 4, 5]
    run(path, [success(6)])  # the next run appends, and so does its index
    index, report = prepare_results_file(path)
    assert (report.rows, report.rows_read) == (7, 0) and done_ids(index) == list(range(7))


def test_without_an_index_the_file_is_read_whole_and_the_index_written_for_next_time(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultWriter(path) as writer:  # an older version's file: rows, no index
        for i in range(4):
            writer.write(success(i))
    assert not index_of(path).exists()
    index, report = prepare_results_file(path)
    assert (report.rows, report.rows_read) == (4, 4) and done_ids(index) == [0, 1, 2, 3]
    assert prepare_results_file(path)[1].rows_read == 0


def test_a_torn_last_row_is_cut_and_the_index_still_vouches_for_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    run(path, [success(i) for i in range(3)])
    intact = path.read_bytes()
    with open(path, "ab") as file:
        file.write(b'[{"input": "text 3"}, {"da')  # killed mid-write: the row has no record yet
    index, report = prepare_results_file(path)
    assert report.repaired_torn_line and (report.rows, report.rows_read) == (3, 0)
    assert path.read_bytes() == intact and done_ids(index) == [0, 1, 2]


def test_rows_after_the_index_ends_are_read_and_indexed(tmp_path: Path) -> None:
    """A crash between a row and its record, or rows an older version appended: only those are read."""
    path = tmp_path / "results.jsonl"
    run(path, [success(i) for i in range(3)])
    with ResultWriter(path) as writer:  # no index
        writer.write(success(3))
        writer.write(failure(4))
    index, report = prepare_results_file(path)
    assert (report.rows, report.rows_read, report.failure_rows) == (5, 2, 1) and done_ids(index) == [0, 1, 2, 3, 4]
    assert prepare_results_file(path)[1].rows_read == 0


def test_a_record_torn_by_a_crash_is_dropped_and_its_row_read_again(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    run(path, [success(i) for i in range(3)])
    with open(index_of(path), "r+b") as file:
        file.truncate(os.path.getsize(index_of(path)) - 5)
    index, report = prepare_results_file(path)
    assert (report.rows, report.rows_read) == (3, 1) and done_ids(index) == [0, 1, 2]
    run(path, [success(3)])
    assert prepare_results_file(path)[1].rows_read == 0


@pytest.mark.parametrize("change", ["replaced by another file", "truncated", "rewritten in place, same size", "index of another file"])
def test_an_index_that_does_not_describe_the_file_is_not_trusted(tmp_path: Path, change: str) -> None:
    path = tmp_path / "results.jsonl"
    run(path, [success(i) for i in range(10, 14)])
    if change == "replaced by another file":  # mv other.jsonl results.jsonl: another inode
        other = tmp_path / "other.jsonl"
        with ResultWriter(other) as writer:
            for i in range(10, 14):
                writer.write(success(i))
        os.replace(other, path)
        expected = [10, 11, 12, 13]
    elif change == "truncated":
        rows = path.read_bytes().splitlines(keepends=True)
        with open(path, "r+b") as file:
            file.truncate(len(rows[0]) + len(rows[1]))
        expected = [10, 11]
    elif change == "rewritten in place, same size":  # rows 10..13 become 15..18: same lengths, same inode
        content = path.read_bytes()
        for old, new in zip(range(10, 14), range(15, 19), strict=True):
            content = content.replace(f"text {old}".encode(), f"text {new}".encode()).replace(f'"id":{old}'.encode(), f'"id":{new}'.encode())
        with open(path, "r+b") as file:
            file.write(content)
        expected = [15, 16, 17, 18]
    else:  # an index from another results file of the same size, copied beside this one
        other = tmp_path / "other.jsonl"
        run(other, [success(i) for i in range(15, 19)])
        os.replace(index_of(other), index_of(path))
        expected = [10, 11, 12, 13]
    index, report = prepare_results_file(path)
    assert report.rows_read == len(expected) and done_ids(index) == expected
    assert prepare_results_file(path)[1].rows_read == 0  # written anew, for this file


def test_retry_failed_removes_failure_rows_by_the_index_and_the_index_follows(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    run(path, [success(0), failure(1), success(2), failure(3)])
    index, report = prepare_results_file(path, retry_failed=True)
    assert (report.rows, report.failures_removed, report.rows_read) == (2, 2, 0)
    assert done_ids(index) == [0, 2]
    assert [row[2]["id"] for row in read_rows(path)] == [0, 2]
    run(path, [success(1), success(3)])  # the retried requests' new rows
    index, report = prepare_results_file(path)
    assert (report.rows, report.failure_rows, report.rows_read) == (4, 0, 0) and done_ids(index) == [0, 1, 2, 3]


def test_batch_rows_are_indexed_too(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    run(path, [success(0), failure(1)], "batch")
    index, report = prepare_results_file(path)
    assert (report.rows, report.failure_rows, report.rows_read) == (2, 1, 0) and done_ids(index) == [0, 1]


def test_a_dry_run_writes_no_index_and_cuts_nothing(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with ResultWriter(path) as writer:
        writer.write(success(0))
    with open(path, "ab") as file:
        file.write(b'[{"input": "torn')
    before = path.read_bytes()
    index, report = prepare_results_file(path, repair=False)
    assert (report.rows, report.rows_read) == (1, 1) and done_ids(index) == [0]
    assert path.read_bytes() == before and not index_of(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.jsonl"]  # no temporary file left either


@pytest.mark.parametrize("kind", ["notes", "directory", "symlink"])
def test_a_file_named_like_the_index_that_is_not_ours_is_refused_and_left_alone(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "results.jsonl"
    with ResultWriter(path) as writer:
        writer.write(success(0))
    target = index_of(path)
    if kind == "notes":
        target.write_text("my notes\n")
    elif kind == "directory":
        target.mkdir()
    else:
        (tmp_path / "elsewhere").write_text("")
        target.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ResumeError, match="is not a resume index of this tool; it is left untouched"):
        prepare_results_file(path)
    with pytest.raises(ResumeError, match="is not a resume index"):
        prepare_results_file(path, repair=False)
    if kind == "notes":
        assert target.read_text() == "my notes\n"
    if kind == "symlink":
        assert target.is_symlink() and (tmp_path / "elsewhere").read_text() == ""


def test_the_writer_never_extends_an_index_out_of_step_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    run(path, [success(0)])
    with open(path, "ab") as file:
        file.write(b'[{"input": "x"}, {"ok": true}]\n')  # no record: a prepare would read it first
    with pytest.raises(ResumeError, match="out of step"):
        IndexWriter(path, path.stat().st_size)


def test_the_done_index_sorts_in_chunks_exactly_as_a_plain_sort() -> None:
    identities = [(i * 0x9E3779B97F4A7C15) % (1 << 64) for i in range(70_000)] + [7, 7, 0, (1 << 64) - 1]  # more than one chunk
    index = DoneIndex(identities)
    assert list(index._hashes) == sorted(identities)
    assert [index.claim(7), index.claim(7), index.claim(7), index.claim(0), index.claim(1)] == [True, True, False, True, False]


def test_a_process_killed_mid_run_leaves_an_index_behind_its_file_never_ahead_and_the_rerun_reads_only_the_rest(tmp_path: Path) -> None:
    # The rows are flushed one by one; their records are buffered (a block of 512 at a time). A child that
    # dies without closing (os._exit, as kill -9 would) leaves every row on disk and only whole blocks of records.
    path = tmp_path / "results.jsonl"
    prepare_results_file(path)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        try:
            writer = ResultWriter(path, index=True)
            for i in range(1_000):
                writer.write(success(i))
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    records_on_disk = (index_of(path).stat().st_size - resume._HEADER_SIZE) // resume._RECORD.size
    assert 0 < records_on_disk < 1_000
    index, report = prepare_results_file(path)
    assert (report.rows, report.rows_read) == (1_000, 1_000 - records_on_disk)
    assert done_ids(index, upto=1_000) == list(range(1_000))
    assert prepare_results_file(path)[1].rows_read == 0  # the index caught up with the file
