"""Reading requests from JSONL and writing results to JSONL, one line at a time.

The reader is lazy (memory stays flat however large the file) and never raises for a bad line: it
yields a `RejectedLine` naming the line number and the reason, so the run goes on and the line is
recorded. The writer appends and flushes each result as it arrives, so a crash loses at most the
requests still in flight.

Two input shapes are recognised line by line: the cookbook's (the API body, plus an optional
"metadata" that is never sent) and the OpenAI Batch API's ({"custom_id", "method", "url", "body"},
where "url" picks the line's endpoint). Two output shapes are written, as compact JSON: the cookbook's
rows `[request, response-or-errors, metadata]` and Batch-output lines
`{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from ..base import strict_json
from ..base.models import APIRequest, RejectedLine, RequestResult, ResultKind
from .resume import IndexWriter, batch_row_id, identity_of_result
from .side_files import still_names

__all__ = [
    "OutputFormat",
    "read_requests",
    "parse_request_line",
    "is_batch_line",
    "count_lines",
    "detect_output_format",
    "ResultWriter",
    "cookbook_row",
    "batch_row",
]

#: Seconds between checks that the output's path still names the file being written (a stat each).
IDENTITY_CHECK_SECONDS = 1.0
#: How much of an unparseable line is kept in the output row, so one huge bad line cannot bloat it.
MAX_REJECTED_TEXT = 1_000
UTF8_BOM = b"\xef\xbb\xbf"


def read_requests(path: str | Path) -> Iterator[APIRequest | RejectedLine]:
    """Yield one item per non-blank line of a JSONL file, numbered from 1 as an editor would.

    Ids must be unique: a line repeating an earlier line's custom_id is rejected, naming both lines.
    (The ids seen are kept in memory: about 100 bytes each, and only when the input gives ids.)
    """
    first_line_of: dict[str, int] = {}
    with open(path, "rb") as file:
        for line_number, raw in enumerate(file, start=1):
            if not raw.strip():
                continue
            item = parse_request_line(raw, line_number)
            if item.custom_id is not None:  # rejected lines with an id count too: ids identify rows
                first = first_line_of.setdefault(item.custom_id, line_number)
                if first != line_number:
                    item = _duplicate(item, first)
            yield item


def _duplicate(item: APIRequest | RejectedLine, first: int) -> RejectedLine:
    """A line repeating an earlier line's id: rejected, and identified by its content, not the id."""
    if isinstance(item, RejectedLine):
        content = item.content
    elif item.url is not None:
        content = {"custom_id": item.custom_id, "url": item.url, "body": item.body}
    else:
        content = {**item.body, "metadata": item.metadata}
    return RejectedLine(item.index, f"line {item.index}: duplicate custom_id {item.custom_id!r} (first on line {first})", content)


def parse_request_line(raw: bytes | str, line_number: int) -> APIRequest | RejectedLine:
    """Turn one line into a request, or say precisely why it cannot be one."""
    if isinstance(raw, bytes) and line_number == 1:
        raw = raw.removeprefix(UTF8_BOM)  # files saved by some Windows editors start with one
    try:
        value = strict_json.loads(raw)
    except strict_json.InvalidJSON as error:
        return _unreadable(raw, line_number, error)
    if not isinstance(value, dict):
        kind = type(value).__name__ if value is not None else "null"
        return RejectedLine(line_number, f"line {line_number}: expected a JSON object, got {kind}", value)
    if is_batch_line(value):
        return _batch_request(value, line_number)
    metadata = value.pop("metadata", None)
    custom_id = metadata.get("custom_id") if isinstance(metadata, dict) else None
    return APIRequest(
        index=line_number, body=value, metadata=metadata, label=f"line {line_number}",
        custom_id=custom_id if isinstance(custom_id, str) else None,
    )


def _unreadable(raw: bytes | str, line_number: int, error: strict_json.InvalidJSON) -> RejectedLine:
    """A line that is not UTF-8, or not JSON this tool takes: its reason, and (clipped) what it held."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            text = bad.object.decode("utf-8", errors="replace")
            return RejectedLine(line_number, f"line {line_number}: not valid UTF-8 ({bad.reason} at byte {bad.start})", _clip(text))
    return RejectedLine(line_number, f"line {line_number}: {error.reason}", _clip(raw.strip()))


def is_batch_line(value: dict[str, Any]) -> bool:
    """A Batch API input line; an API body never has these two top-level fields."""
    return "custom_id" in value and "body" in value


def _batch_request(value: dict[str, Any], line_number: int) -> APIRequest | RejectedLine:
    custom_id, url, body = value.get("custom_id"), value.get("url"), value.get("body")
    problem: str | None = None
    if not isinstance(custom_id, str) or not custom_id:
        problem = "its custom_id must be a non-empty string"
    elif not isinstance(url, str):
        problem = "its url must be a string such as \"/v1/chat/completions\""
    elif not isinstance(body, dict):
        problem = "its body must be a JSON object"
    elif value.get("method", "POST") != "POST":
        problem = f"method {value.get('method')!r} is not supported (only POST)"
    if problem is not None or not isinstance(custom_id, str) or not isinstance(url, str) or not isinstance(body, dict):
        known_id = custom_id if isinstance(custom_id, str) and custom_id else None
        return RejectedLine(line_number, f"line {line_number}: Batch line, but {problem}", value, custom_id=known_id)
    return APIRequest(
        index=line_number, body=body, metadata={"custom_id": custom_id},
        label=f"line {line_number} ({custom_id})", url=url, custom_id=custom_id,
    )


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REJECTED_TEXT else text[:MAX_REJECTED_TEXT] + "…"


def detect_output_format(path: str | Path, *, lines: int = 100) -> OutputFormat:
    """Batch output for a Batch input, the cookbook's rows otherwise (judged by the first readable line)."""
    for item in itertools.islice(read_requests(path), lines):
        if isinstance(item, APIRequest):
            return "batch" if item.url is not None else "cookbook"
    return "cookbook"


def count_lines(path: str | Path) -> int:
    """Non-blank lines (as `read_requests` sees them), for the progress bar's total: one fast pass, no parsing."""
    count = 0
    with open(path, "rb") as file:
        for raw in file:
            if raw.strip():
                count += 1
    return count


OutputFormat = Literal["cookbook", "batch"]
# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_SUCCEEDED = ResultKind.SUCCEEDED


def cookbook_row(result: RequestResult) -> bytes:
    """`[request, response, metadata]` on success, `[request, [errors...], metadata]` after the last failure,
    as one line of compact JSON. Metadata is left out when the input had none, as the cookbook does."""
    outcome: Any = result.response if result.kind is _SUCCEEDED else list(result.errors)
    row = [result.request, outcome] if result.metadata is None else [result.request, outcome, result.metadata]
    return _encode(row) + b"\n"


def batch_row(result: RequestResult, identity_: int) -> bytes:
    """A Batch-output line, so results from this tool and from the Batch API are read by the same code.

    The "id" carries the request's resume identity (`identity_`), which is how a rerun recognises the row.
    The line starts `{"id": "batch_req_`, spaced as every version of this tool has written it: a rerun
    recognises a torn one by that start.
    """
    response = None
    error = None
    if result.kind is ResultKind.SUCCEEDED:
        response = {"status_code": result.status or 200, "request_id": result.request_id or "", "body": result.response}
    elif result.status is not None:
        body = result.error_body if result.error_body is not None else {"error": {"message": result.errors[-1]}}
        response = {"status_code": result.status, "request_id": result.request_id or "", "body": body}
    else:
        code = "invalid_request" if result.kind is ResultKind.INVALID else "request_failed"
        error = {"code": code, "message": result.errors[-1] if result.errors else ""}
    return b"".join((
        b'{"id": "', batch_row_id(identity_).encode(), b'", "custom_id": ', _encode(result.custom_id),
        b', "response": ', _encode(response), b', "error": ', _encode(error), b"}\n",
    ))


class ResultWriter:
    """Appends one JSON line per result and flushes it, so what is written survives a crash.

    With `index`, each row's identity and end offset also go to the resume index beside the file
    (`resume.IndexWriter`), buffered after the row is flushed: `resume.prepare_results_file` must have made the index
    match the file first. After a failed write (disk full, file too large) the writer refuses further rows:
    a partial row may be on disk, and only a rerun's check of the file (which cuts a torn last line) can
    repair it.
    """

    def __init__(self, path: str | Path, output_format: OutputFormat = "cookbook", *, index: bool = False) -> None:
        self.path = Path(path)
        self._batch = output_format == "batch"
        self._file: IO[bytes] = open(self.path, "ab")  # noqa: SIM115 (closed by close(), for the whole run)
        try:
            held = os.fstat(self._file.fileno())
            self._index = IndexWriter(self.path, held.st_size) if index else None
        except BaseException:
            self._file.close()
            raise
        self._failed = False
        self._identity = (held.st_dev, held.st_ino)
        self._next_check = time.monotonic() + IDENTITY_CHECK_SECONDS
        #: Set (once) when the path no longer names the file this writer holds: what happened, in words.
        self.moved: str | None = None

    def write(self, result: RequestResult) -> None:
        if self._failed:
            raise OSError(f"an earlier write to {self.path} failed")
        try:
            identity_ = identity_of_result(result) if self._batch or self._index is not None else 0
            line = batch_row(result, identity_) if self._batch else cookbook_row(result)
            self._file.write(line)
            self._file.flush()
            if self._index is not None:
                self._index.add(identity_, len(line), failed=not result.succeeded)
        except OSError:
            self._failed = True
            raise
        if self.moved is None and (now := time.monotonic()) >= self._next_check:  # a stat a second, not one a row
            self._next_check = now + IDENTITY_CHECK_SECONDS
            self.moved = self.check_moved()

    def check_moved(self) -> str | None:
        """Whether the path still names the file held (log rotation renames it, a cleanup deletes it), and if not, what
        became of the rows written to it."""
        if still_names(self.path, self._identity):
            return None
        if os.fstat(self._file.fileno()).st_nlink == 0:
            return (f"{self.path} was deleted during the run: the rows written to it are gone with it, and a rerun sends "
                    "those lines again")
        return (f"{self.path} was moved or replaced during the run (log rotation?): this run's rows are in the file as "
                f"moved; put it back as {self.path} before a rerun, or the rerun pays for those lines again")

    def close(self) -> None:
        try:
            self._file.close()
            if self._index is not None:
                self._index.close()
        except OSError:
            if not self._failed:
                raise

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _encode(value: Any) -> bytes:
    # Non-ASCII text stays readable (UTF-8, not \u escapes); default=str turns anything odd into text rather
    # than losing the line.
    return strict_json.dumps(value, default=str)
