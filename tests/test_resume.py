"""Reading back a results file: the done index, torn lines, failure rows and damaged files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rate_limited_processor.base.models import RequestResult, ResultKind
from rate_limited_processor.files.request_io import ResultWriter, parse_request_line
from rate_limited_processor.files.resume import DoneIndex, ResumeError, identity, identity_of_item, prepare_results_file


def write_results(path: Path, results: list[RequestResult]) -> None:
    with ResultWriter(path) as writer:
        for result in results:
            writer.write(result)


def success(body: dict, metadata: object = None) -> RequestResult:
    return RequestResult(1, body, metadata, {"ok": True}, (), attempts=1, kind=ResultKind.SUCCEEDED)


def failure(body: dict, metadata: object = None) -> RequestResult:
    return RequestResult(1, body, metadata, None, ("HTTP 400: bad",), attempts=1, kind=ResultKind.FAILED)


def test_an_input_line_and_the_row_written_for_it_have_the_same_identity(tmp_path: Path) -> None:
    line = b'{"model": "m", "input": "h\xc3\xa9llo", "metadata": {"b": 1, "a": [1.5, 2]}}'
    item = parse_request_line(line, 1)
    path = tmp_path / "out.jsonl"
    write_results(path, [success(item.body, item.metadata)])  # type: ignore[union-attr]
    row = json.loads(path.read_text(encoding="utf-8"))
    assert identity_of_item(item) == identity(row[0], row[2])
    rejected = parse_request_line(b"[1, 2]", 2)
    assert identity_of_item(rejected) == identity([1, 2], None)


def test_identity_depends_on_body_and_metadata_not_key_order() -> None:
    assert identity({"a": 1, "b": 2}, None) == identity({"b": 2, "a": 1}, None)
    assert identity({"a": 1}, None) != identity({"a": 1}, {"id": 1})
    assert identity({"a": 1}, {"id": 1}) != identity({"a": 1}, {"id": 2})


def test_done_index_claims_each_row_once_so_duplicate_lines_count_as_often_as_they_occur() -> None:
    same = identity({"input": "x"}, None)
    index = DoneIndex([same, same, identity({"input": "y"}, None)])
    assert [index.claim(same) for _ in range(3)] == [True, True, False]
    assert index.claim(identity({"input": "z"}, None)) is False
    assert (index.claimed, index.unclaimed) == (2, 1)


def test_missing_or_empty_results_file_means_a_fresh_start(tmp_path: Path) -> None:
    index, report = prepare_results_file(tmp_path / "absent.jsonl")
    assert len(index) == 0 and report.rows == 0
    (tmp_path / "empty.jsonl").write_text("")
    assert prepare_results_file(tmp_path / "empty.jsonl")[1].rows == 0


def test_a_torn_last_line_is_cut_off_and_not_counted(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_results(path, [success({"input": "a"}), success({"input": "b"})])
    intact = path.read_bytes()
    with open(path, "ab") as file:
        file.write(b'[{"input": "c"}, {"ok": tr')  # the process died here
    index, report = prepare_results_file(path)
    assert report.repaired_torn_line and report.rows == 2
    assert path.read_bytes() == intact
    assert index.claim(identity({"input": "c"}, None)) is False


def test_a_complete_row_without_its_newline_is_also_torn(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('[{"input": "a"}, {"ok": true}]\n[{"input": "b"}, {"ok": true}]')
    index, report = prepare_results_file(path)
    assert report.repaired_torn_line and report.rows == 1
    assert path.read_text() == '[{"input": "a"}, {"ok": true}]\n'


def test_a_damaged_row_in_the_middle_stops_the_resume(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('[{"input": "a"}, {"ok": true}]\nGARBAGE\n[{"input": "b"}, {"ok": true}]\n')
    with pytest.raises(ResumeError, match="row 2"):
        prepare_results_file(path)


def test_failures_count_as_done_unless_they_are_to_be_retried(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    write_results(path, [success({"input": "a"}), failure({"input": "b"}, {"id": 2}), success({"input": "c"})])
    index, report = prepare_results_file(path)
    assert report.rows == 3 and index.claim(identity({"input": "b"}, {"id": 2}))

    index, report = prepare_results_file(path, retry_failed=True)
    assert (report.rows, report.failures_removed) == (2, 1)
    assert index.claim(identity({"input": "b"}, {"id": 2})) is False
    # The failure row is gone from the file, so the retried request's new row will be its only one.
    assert [json.loads(line)[0]["input"] for line in path.read_text().splitlines()] == ["a", "c"]
