"""Reading requests from JSONL and writing results to JSONL, one line at a time.

The reader is lazy (memory stays flat however large the file) and never raises for a bad line: it
yields a `RejectedLine` naming the line number and the reason, so the run goes on and the line is
recorded. The writer appends and flushes each result as it arrives, so a crash loses at most the
requests still in flight.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .models import APIRequest, RejectedLine, RequestResult

__all__ = ["read_requests", "parse_request_line", "count_lines", "ResultWriter"]

#: How much of an unparseable line is kept in the output row, so one huge bad line cannot bloat it.
MAX_REJECTED_TEXT = 1_000
UTF8_BOM = b"\xef\xbb\xbf"


def read_requests(path: str | Path) -> Iterator[APIRequest | RejectedLine]:
    """Yield one item per non-blank line of a JSONL file, numbered from 1 as an editor would."""
    with open(path, "rb") as file:
        for line_number, raw in enumerate(file, start=1):
            if raw.strip():
                yield parse_request_line(raw, line_number)


def parse_request_line(raw: bytes | str, line_number: int) -> APIRequest | RejectedLine:
    """Turn one line into a request, or say precisely why it cannot be one."""
    if isinstance(raw, bytes):
        if line_number == 1:
            raw = raw.removeprefix(UTF8_BOM)  # files saved by some Windows editors start with one
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            text = raw.decode("utf-8", errors="replace")
            return RejectedLine(line_number, f"line {line_number}: not valid UTF-8 ({error.reason} at byte {error.start})", _clip(text))
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except _NotStrictJSON as error:
        return RejectedLine(line_number, f"line {line_number}: {error} is not valid JSON (it can be neither sent nor written back)", _clip(raw.strip()))
    except json.JSONDecodeError as error:
        return RejectedLine(line_number, f"line {line_number}: not valid JSON ({error.msg} at column {error.colno})", _clip(raw.strip()))
    if not isinstance(value, dict):
        kind = type(value).__name__ if value is not None else "null"
        return RejectedLine(line_number, f"line {line_number}: expected a JSON object, got {kind}", value)
    metadata = value.pop("metadata", None)
    return APIRequest(index=line_number, body=value, metadata=metadata, label=f"line {line_number}")


class _NotStrictJSON(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, but they are not JSON and cannot be written back as JSON."""


def _refuse_constant(name: str) -> None:
    raise _NotStrictJSON(name)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REJECTED_TEXT else text[:MAX_REJECTED_TEXT] + "…"


def count_lines(path: str | Path) -> int:
    """Non-blank lines (as `read_requests` sees them), for the progress bar's total: one fast pass, no parsing."""
    count = 0
    with open(path, "rb") as file:
        for raw in file:
            if raw.strip():
                count += 1
    return count


class ResultWriter:
    """Appends one JSON line per result and flushes it, so what is written survives a crash.

    After a failed write (disk full, file too large) the writer refuses further rows: a partial row may
    be on disk, and only a rerun's check of the file (which cuts a torn last line) can repair it.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[str] = open(self.path, "a", encoding="utf-8")
        self._failed = False

    def write(self, result: RequestResult) -> None:
        if self._failed:
            raise OSError(f"an earlier write to {self.path} failed")
        try:
            self._file.write(_dumps(result.to_row()) + "\n")
            self._file.flush()
        except OSError:
            self._failed = True
            raise

    def close(self) -> None:
        try:
            self._file.close()
        except OSError:
            if not self._failed:
                raise

    def __enter__(self) -> ResultWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _dumps(row: list[Any]) -> str:
    # ensure_ascii=False keeps non-English text readable; default=str turns anything odd into text
    # rather than losing the line.
    return json.dumps(row, ensure_ascii=False, default=str)
