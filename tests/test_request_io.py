"""The JSONL reader and writer: lazy, line-numbered, never raising for a bad line."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

from rate_limited_processor.base.models import APIRequest, RejectedLine, RequestResult, ResultKind
from rate_limited_processor.files.request_io import ResultWriter, count_lines, parse_request_line, read_requests


def test_reader_numbers_lines_as_an_editor_does_and_skips_blank_ones(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"input": "a"}\n\n   \n{"input": "b", "metadata": {"row": 2}}\n')
    items = list(read_requests(path))
    assert items == [
        APIRequest(index=1, body={"input": "a"}, metadata=None, label="line 1"),
        APIRequest(index=4, body={"input": "b"}, metadata={"row": 2}, label="line 4"),
    ]


def test_metadata_is_taken_out_of_the_body_so_it_is_never_sent() -> None:
    item = parse_request_line(b'{"model": "m", "metadata": [1, 2]}', 7)
    assert isinstance(item, APIRequest)
    assert "metadata" not in item.body and item.metadata == [1, 2]


def test_bad_lines_are_rejected_with_their_line_number_and_reason() -> None:
    not_json = parse_request_line(b"{oops", 3)
    assert isinstance(not_json, RejectedLine)
    assert not_json.reason.startswith("line 3: not valid JSON") and not_json.content == "{oops"

    array = parse_request_line(b"[1, 2]", 4)
    assert isinstance(array, RejectedLine) and array.reason == "line 4: expected a JSON object, got list"
    assert array.content == [1, 2]

    number = parse_request_line(b"42", 5)
    assert isinstance(number, RejectedLine) and number.reason == "line 5: expected a JSON object, got int"

    bad_utf8 = parse_request_line(b'{"input": "\xff\xfe"}', 6)
    assert isinstance(bad_utf8, RejectedLine) and bad_utf8.reason.startswith("line 6: not valid UTF-8")


def test_a_huge_bad_line_is_clipped_in_the_record() -> None:
    rejected = parse_request_line(b"x" * 100_000, 1)
    assert isinstance(rejected, RejectedLine)
    assert len(rejected.content) < 1_100


def test_count_lines_matches_what_the_reader_yields(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n\n[1]\nnot json\n{"b": 2}')  # no final newline
    assert count_lines(path) == len(list(read_requests(path))) == 4


def test_reader_is_lazy_memory_does_not_grow_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = json.dumps({"model": "m", "input": "x" * 200}) + "\n"
    path.write_text(line * 50_000)  # ~11 MB
    tracemalloc.start()
    try:
        count = sum(1 for _ in read_requests(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50_000
    assert peak < 1_000_000  # a list of all requests would be tens of MB


def test_writer_appends_cookbook_rows_and_flushes_each_one(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('["earlier run"]\n')
    ok = RequestResult(1, {"input": "a"}, None, {"data": []}, (), attempts=1, kind=ResultKind.SUCCEEDED)
    failed = RequestResult(2, {"input": "b"}, {"id": 2}, None, ("HTTP 500: boom", "HTTP 400: bad"), attempts=2, kind=ResultKind.FAILED)
    with ResultWriter(path) as writer:
        writer.write(ok)
        # Flushed: visible to another reader before the writer is closed.
        assert json.loads(path.read_text().splitlines()[-1]) == [{"input": "a"}, {"data": []}]
        writer.write(failed)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [
        ["earlier run"],
        [{"input": "a"}, {"data": []}],
        [{"input": "b"}, ["HTTP 500: boom", "HTTP 400: bad"], {"id": 2}],
    ]


def test_writer_keeps_non_ascii_text_readable(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with ResultWriter(path) as writer:
        writer.write(RequestResult(1, {"input": "héllo 世界"}, None, {"ok": True}, (), attempts=1, kind=ResultKind.SUCCEEDED))
    assert "héllo 世界" in path.read_text(encoding="utf-8")


def test_a_lone_surrogate_escape_is_rejected_not_paid_for_and_then_unwritable() -> None:
    rejected = parse_request_line(b'{"input": "a\\ud800b"}', 3)
    assert isinstance(rejected, RejectedLine) and "unpaired UTF-16 surrogate" in rejected.reason
    paired = parse_request_line(b'{"input": "\\ud83d\\ude00"}', 4)  # a proper pair is an emoji: fine
    assert isinstance(paired, APIRequest) and paired.body["input"] == "\U0001f600"
