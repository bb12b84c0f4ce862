"""Input built to break parsers: each such line is one invalid line, named by its number, and the run goes on.

What an attacker puts in a requests file: a line nested 100,000 deep (RecursionError in Python's json), an
integer of 5,000 digits (Python's int-string limit, a plain ValueError), `1e400` (read as infinity, then
sent and written as `Infinity`, which is not JSON). Each is tried as the first line (the start-up check),
in the middle and as the last line, through the reader, the command, a whole run, its rerun, the results
file scan and the mock.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import UNLIMITED, ResultKind, Settings, TransportRequest, process_requests_sync, run_file_job
from rate_limited_processor.base.errors import ResumeError
from rate_limited_processor.base.models import APIRequest, RejectedLine
from rate_limited_processor.cli import main
from rate_limited_processor.files.request_io import parse_request_line
from rate_limited_processor.files.resume import prepare_results_file
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.mock_server.api import MockRequest
from tests.helpers import chat_request, mock_url, write_jsonl
from tests.virtual_time import run_virtual

CHAT = '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]'


def nested_lists(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


#: name -> (a hostile line, what its reason must say)
HOSTILE_LINES = {
    "lists 100,000 deep": (CHAT + ', "metadata": ' + nested_lists(100_000) + "}", "nested deeper than"),
    "objects 100,000 deep": (CHAT + ', "metadata": ' + nested_objects(100_000) + "}", "nested deeper than"),
    # Parses at the top of the stack, yet too deep to serialise from inside a run (a Batch row adds 2 levels).
    "lists 990 deep": (CHAT + ', "metadata": ' + nested_lists(990) + "}", "nested deeper than"),
    "a whole line 100,000 deep": (nested_lists(100_000), "nested deeper than"),
    "a 5,000-digit integer": (CHAT + ', "seed": ' + "7" * 5_000 + "}", "more than 4300 digits"),
    "1e400": (CHAT + ', "temperature": 1e400}', "1e400 is too large for JSON"),
    "-1e400": (CHAT + ', "temperature": -1e400}', "-1e400 is too large for JSON"),
    "400 digits and a fraction": (CHAT + ', "temperature": ' + "9" * 400 + ".5}", "is too large for JSON"),
    "NaN": (CHAT + ', "temperature": NaN}', "NaN is not valid JSON"),
    "-Infinity": (CHAT + ', "temperature": -Infinity}', "-Infinity is not valid JSON"),
    "a lone surrogate": (CHAT + ', "metadata": "\\udc00"}', "unpaired UTF-16 surrogate"),
}


def strict_rows(path: Path) -> list[Any]:
    """The rows as a strict JSON reader (not Python's lenient one) reads them: Infinity would fail here."""

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in a row: not JSON")

    def finite(text: str) -> float:
        value = float(text)
        assert math.isfinite(value), f"{text} in a row: not a finite number"
        return value

    return [json.loads(line, parse_constant=refuse, parse_float=finite) for line in path.read_text(encoding="utf-8").splitlines()]


def settings() -> Settings:
    return Settings(request_url=mock_url(), api_key=None, limits=UNLIMITED)


@pytest.mark.parametrize("name", HOSTILE_LINES)
def test_a_hostile_line_is_one_rejected_line_naming_its_number_and_why(name: str) -> None:
    line, says = HOSTILE_LINES[name]
    item = parse_request_line(line.encode(), 7)
    assert isinstance(item, RejectedLine)
    assert item.reason.startswith("line 7: ") and says in item.reason
    assert isinstance(item.content, str) and len(item.content) < 1_100  # the text, clipped; never the parsed monster


@pytest.mark.parametrize(
    "line",
    [
        CHAT + ', "seed": ' + "7" * 4_000 + "}",  # long, but within what Python reads and writes back
        CHAT + ', "temperature": 1e308}',  # the largest doubles are fine
        CHAT + ', "temperature": 1e-400}',  # underflows to 0.0: finite
        CHAT + ', "metadata": ' + nested_lists(50) + "}",  # deep, as a JSON schema can be
        CHAT + ', "metadata": "\\ud83d\\ude00"}',  # a surrogate pair is an emoji
    ],
    ids=["4000-digit integer", "1e308", "1e-400", "50 deep", "surrogate pair"],
)
def test_lines_near_the_limits_are_still_requests(line: str) -> None:
    assert isinstance(parse_request_line(line.encode(), 1), APIRequest)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("output_format", ["cookbook", "batch"])
def test_a_run_records_every_hostile_line_as_invalid_sends_the_rest_and_its_rerun_sends_nothing(
    tmp_path: Path, where: str, output_format: str
) -> None:
    good = [json.dumps(chat_request(i)) for i in range(3)]
    hostile = [line for line, _ in HOSTILE_LINES.values()]
    lines = {"first": hostile + good, "middle": good[:1] + hostile + good[1:], "last": good + hostile}[where]
    input_path = write_jsonl(tmp_path / "requests.jsonl", lines)
    output_path = tmp_path / "results.jsonl"
    api = MockApi()

    def run() -> Any:
        job = run_file_job(settings(), input_path, output_path, show_progress=False, transport=MockTransport(api), output_format=output_format)  # type: ignore[arg-type]
        return run_virtual(job)

    stats = run()
    assert stats.stop_reason is None
    assert (stats.succeeded, stats.invalid) == (3, len(hostile))
    assert len(api.record) == 3  # nothing hostile went on the wire
    rows = strict_rows(output_path)  # every row is strict JSON: no Infinity, readable by any JSON reader
    assert len(rows) == 3 + len(hostile)
    if output_format == "cookbook":
        reasons = [row[1][0] for row in rows if isinstance(row[1], list)]
    else:
        reasons = [row["error"]["message"] for row in rows if row["error"] is not None]
    hostile_numbers = [number for number, line in enumerate(lines, start=1) if line in hostile]
    assert sorted(int(reason.split(":")[0].removeprefix("line ")) for reason in reasons) == hostile_numbers

    rerun = run()
    assert rerun.stop_reason is None and rerun.already_done == 3 + len(hostile)
    assert len(api.record) == 3  # the rerun read every row back, hostile ones included, and sent nothing


@pytest.mark.parametrize("name", ["lists 100,000 deep", "a 5,000-digit integer", "1e400"])
def test_a_hostile_first_line_is_named_at_start_up_without_a_traceback(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    line, says = HOSTILE_LINES[name]
    alone = write_jsonl(tmp_path / "alone.jsonl", [line])
    code = main(["--requests_filepath", str(alone), "--request_url", mock_url(), "--dry_run"])
    err = capsys.readouterr().err
    assert code == 2 and "line 1: " in err and says in err and "Traceback" not in err

    followed = write_jsonl(tmp_path / "followed.jsonl", [line, json.dumps(chat_request(1))])
    code = main(["--requests_filepath", str(followed), "--request_url", mock_url(), "--dry_run", "--max_requests_per_minute", "60"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "line 1: " in captured.out and says in captured.out  # the plan names it; the good line goes on


@pytest.mark.parametrize(
    "row",
    [
        '[{"input": "x"}, {"data": ' + nested_lists(100_000) + "}]",
        '[{"input": "x"}, {"data": [' + "1" * 5_000 + "]}]",
        '[{"input": "x"}, {"data": [1e400]}]',
        '[{"input": "x"}, {"data": [NaN]}]',
    ],
    ids=["deep", "5000 digits", "1e400", "NaN"],
)
def test_a_results_file_row_built_to_break_the_scan_is_refused_not_a_crash(tmp_path: Path, row: str) -> None:
    path = tmp_path / "results.jsonl"
    content = '[{"input": "a"}, {"data": []}]\n' + row + '\n[{"input": "b"}, {"data": []}]\n'
    path.write_text(content)
    with pytest.raises(ResumeError, match="row 2 is not a result row"):
        prepare_results_file(path)
    assert path.read_text() == content  # and nothing was cut


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "m", "messages": ' + nested_lists(100_000).encode() + b"}",
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "seed": ' + b"1" * 5_000 + b"}",
        b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 1e400}',
    ],
    ids=["deep", "5000 digits", "1e400"],
)
def test_the_mock_answers_a_hostile_body_with_a_400_as_the_api_would(body: bytes) -> None:
    async def answer() -> Any:
        return await MockApi(MockConfig()).answer(MockRequest("/v1/chat/completions", body))

    reply = run_virtual(answer())
    assert reply.status == 400 and b"parse the JSON body" in reply.body


def test_a_batch_row_whose_status_is_not_a_number_is_a_failure_row_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    row = {"id": "batch_req_" + "0" * 16, "custom_id": "a", "response": {"status_code": "200", "body": {}}, "error": None}
    path.write_text(json.dumps(row) + "\n")
    index, report = prepare_results_file(path, retry_failed=True)
    assert (report.rows, report.failures_removed) == (0, 1)  # not a success: a rerun with --retry_failed sends it again


def test_a_callers_request_that_json_cannot_carry_is_invalid_named_and_never_sent() -> None:
    """Library callers hand in dicts, which no strict reader has seen: the run judges them before sending."""
    deep: dict[str, Any] = {}
    inner = deep
    for _ in range(100_000):
        inner["x"] = inner = {}
    base: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    requests: list[dict[str, Any]] = [
        base, {**base, "response_format": deep}, {**base, "temperature": math.nan}, {**base, "tools": {("a", "b"): 1}},
        {**base, "logit_bias": {50256: -100}},
    ]
    sent: list[Any] = []

    def answer(request: TransportRequest) -> dict[str, Any]:
        sent.append(request.body)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}

    settings = Settings(request_url=mock_url(), api_key=None, limits=UNLIMITED)
    results = {result.index: result for result in process_requests_sync(requests, settings, transport=answer)}
    assert len(sent) == 2 and [results[i].kind for i in (1, 5)] == [ResultKind.SUCCEEDED] * 2
    assert sent[1]["logit_bias"] == {50256: -100}, "token ids as keys go, spelled as json spells them"
    assert [results[i].kind for i in (2, 3, 4)] == [ResultKind.INVALID] * 3
    assert results[2].errors == ("request 2: the request body is nested deeper than 200 levels",)
    assert "request 3: the request body holds nan" in results[3].errors[0]
    assert "request 4: the request body has a key JSON cannot spell (tuple ('a', 'b'))" in results[4].errors[0]
