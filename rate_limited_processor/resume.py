"""Resuming a job: which input lines already have a final row in the results file.

A rerun of the same command must not pay twice for a request that already has its result. Rows are
matched to input lines by a 64-bit identity computed the same way from an input line and from an output
row: the hash of the request's id when the input gives one (a Batch line's custom_id, or
metadata.custom_id), else of its body and metadata. Matching by content means a reordered input resumes
correctly (nothing can be matched to the wrong line), identical lines are counted as many times as they
occur, and an edited line is simply a new request; the row of its old version matches no input line
and is reported. Batch-output rows carry the identity in their "id".

The index is a sorted array of 8-byte hashes plus one claim flag per row: about 9 bytes per finished
request while the run goes on, never the rows themselves. Building it needs about 70 bytes per row for
a moment (the hashes are sorted as a Python list): some 700 MB for a 10-million-row results file.

The results file is checked before anything is sent, and it must be one: every complete line one of the
two row shapes the writer writes (see `_parse_row`). A file that is not (someone else's, the input under
another name) is refused and never changed. Only a last line without its newline that starts like a row
can be a write cut short: that one is cut off and its request sent again. Any other line that is not a
row stops the run before sending, naming the row.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import strict_json
from .errors import ResumeError
from .models import APIRequest, RejectedLine, RequestResult

__all__ = [
    "ResumeError",
    "ResumeReport",
    "DoneIndex",
    "batch_row_id",
    "identity",
    "identity_of_id",
    "identity_of_item",
    "identity_of_result",
    "prepare_results_file",
    "sidecar_path",
]

_BATCH_ID_PREFIX = "batch_req_"
_BATCH_ID = re.compile(re.escape(_BATCH_ID_PREFIX) + "([0-9a-f]{16})")
#: How a Batch-output row starts, as the writer writes it (json.dumps' default separators).
_BATCH_ROW_START = b'{"id": "' + _BATCH_ID_PREFIX.encode()
_BATCH_ROW_KEYS = frozenset({"id", "custom_id", "response", "error"})
#: Levels a row adds around what it holds: a Batch row's body sits two levels down.
ROW_NESTING = 2


def identity(request: Any, metadata: Any) -> int:
    """The 64-bit content identity of a request with its metadata (as written in an output row)."""
    canonical = json.dumps([request, metadata], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=8).digest(), "big")


def identity_of_id(custom_id: str) -> int:
    """The identity of a request the input gave an id."""
    return identity("custom_id", custom_id)


def identity_of_item(item: APIRequest | RejectedLine) -> int:
    """The identity of an input item, equal to that of the row the run writes for it."""
    if item.custom_id is not None:
        return identity_of_id(item.custom_id)
    if isinstance(item, RejectedLine):
        return identity(item.content, None)
    return identity(item.body, item.metadata)


def identity_of_result(result: RequestResult) -> int:
    """The identity of a result: that of the input item it came from."""
    if result.custom_id is not None:
        return identity_of_id(result.custom_id)
    return identity(result.request, result.metadata)


def batch_row_id(identity_: int) -> str:
    """A Batch-output row's "id", which carries its identity for a rerun."""
    return f"{_BATCH_ID_PREFIX}{identity_:016x}"


class DoneIndex:
    """The identities of requests that already have a final row; each row can be claimed once."""

    __slots__ = ("_hashes", "_claimed", "claimed")

    #: Rows claimed so far: requests skipped because they already have their final row.
    claimed: int

    def __init__(self, identities: list[int] | None = None) -> None:
        self._hashes = array("Q", sorted(identities or ()))
        self._claimed = bytearray(len(self._hashes))
        self.claimed = 0

    def __len__(self) -> int:
        return len(self._hashes)

    def __repr__(self) -> str:
        return f"DoneIndex({len(self)} rows, {self.claimed} claimed)"

    def claim(self, identity_: int) -> bool:
        """True (once per matching row) when this request already has a final row."""
        position = bisect_left(self._hashes, identity_)
        while position < len(self._hashes) and self._hashes[position] == identity_:
            if not self._claimed[position]:
                self._claimed[position] = 1
                self.claimed += 1
                return True
            position += 1
        return False

    @property
    def unclaimed(self) -> int:
        """Rows that matched no input line (so far): after a full pass, rows of edited or removed lines."""
        return len(self) - self.claimed


@dataclass(frozen=True, slots=True)
class ResumeReport:
    """What was found in the results file before the run started."""

    #: Final rows found (successes and failures alike, unless failures are being retried).
    rows: int
    #: Failure rows removed because failed requests are to be retried.
    failures_removed: int
    #: True when a torn last line was cut off.
    repaired_torn_line: bool
    #: Failure rows kept (they count as done, and --retry_failed would send them again).
    failure_rows: int = 0


def prepare_results_file(path: str | Path, *, retry_failed: bool = False, repair: bool = True) -> tuple[DoneIndex, ResumeReport]:
    """Check the results file, repair a torn last line, drop failure rows if retrying them, and index it.

    A file that is absent or empty is a fresh start. Any other file must be a results file: every
    complete line one of the two row shapes this tool writes. Else ResumeError, and nothing is changed:
    a file that is not a results file is not ours to cut. With `repair=False` (a dry run) the file is
    only read: the index is the same, nothing is changed.
    """
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return DoneIndex(), ResumeReport(0, 0, False)
    identities: list[int] = []
    failures = 0
    failures_kept = 0
    good_end = 0  # byte offset just past the last complete, valid row
    torn = False
    with open(path, "rb") as file:
        for row_number, raw in enumerate(file, start=1):
            if not raw.endswith(b"\n"):
                # Only the last line can lack its newline; it is torn if it is the start of a row we write.
                if not _could_be_a_torn_row(raw):
                    raise ResumeError(_not_a_row(path, row_number, rows_before=row_number - 1))
                torn = True
                break
            row = _parse_row(raw)
            if row is None:  # a complete line that is not a row is damage, never a torn write
                raise ResumeError(_not_a_row(path, row_number, rows_before=row_number - 1))
            good_end += len(raw)
            row_identity, failed = row
            if retry_failed and failed:
                failures += 1
                continue
            failures_kept += failed
            identities.append(row_identity)
    if torn and repair:
        with open(path, "r+b") as file:
            file.truncate(good_end)
    if failures and repair:
        _rewrite_without_failures(path)
    return DoneIndex(identities), ResumeReport(len(identities), failures, torn, failures_kept)


def sidecar_path(results_path: str | Path, kind: str) -> Path:
    """Where the tool keeps a file about a results file: `<results file>.<kind>` ("lock") beside it.

    Symlinks are resolved, so every path to one results file names the same sidecar.
    """
    real = Path(results_path).resolve()
    return real.with_name(f"{real.name}.{kind}")


def _not_a_row(path: Path, row_number: int, *, rows_before: int) -> str:
    if rows_before == 0:
        return (
            f"{path} is not a results file of this tool (its line {row_number} is not a result row); it is left untouched: "
            "choose another output file, or move this one aside"
        )
    return f"{path}: row {row_number} is not a result row; cannot resume safely (move the file aside to start over)"


def _could_be_a_torn_row(raw: bytes) -> bool:
    """The start of a row as the writer writes it: a cookbook row, or a Batch-output line."""
    return raw.startswith((b"[", _BATCH_ROW_START)) or _BATCH_ROW_START.startswith(raw)


def _parse_row(raw: bytes) -> tuple[int, bool] | None:
    """A row's (identity, is it a failure), for either output shape; None if it is not a result row.

    A cookbook row is `[request, response-object or list of error strings(, metadata)]`; a Batch-output
    row is an object with "id" ("batch_req_" and 16 hex digits), "custom_id", "response" and "error".
    """
    try:
        row = strict_json.loads(raw.decode("utf-8"), max_depth=strict_json.MAX_DEPTH + ROW_NESTING)
    except (UnicodeDecodeError, strict_json.InvalidJSON):
        return None
    if isinstance(row, list) and len(row) in (2, 3) and _is_outcome(row[1]):
        request, outcome = row[0], row[1]
        metadata = row[2] if len(row) == 3 else None
        custom_id = metadata.get("custom_id") if isinstance(metadata, dict) else None
        row_identity = identity_of_id(custom_id) if isinstance(custom_id, str) else identity(request, metadata)
        return row_identity, isinstance(outcome, list)
    if isinstance(row, dict) and row.keys() >= _BATCH_ROW_KEYS and isinstance(row["id"], str):
        match = _BATCH_ID.fullmatch(row["id"])
        if match is None:
            return None
        response = row["response"]
        status = response.get("status_code") if isinstance(response, dict) else None
        succeeded = isinstance(status, int) and 200 <= status < 300
        return int(match[1], 16), not succeeded
    return None


def _is_outcome(value: Any) -> bool:
    """A response object, or the errors of a failure: a non-empty list of strings."""
    return isinstance(value, dict) or (isinstance(value, list) and bool(value) and all(isinstance(error, str) for error in value))


def _rewrite_without_failures(path: Path) -> None:
    """Keep only success rows, replacing the file atomically so a crash here loses nothing.

    The real file is replaced (a symlink to it stays a symlink), with its permissions kept.
    """
    real = path.resolve()
    with open(real, "rb") as source, tempfile.NamedTemporaryFile("wb", dir=real.parent, prefix=f".{real.name}.", delete=False) as target:
        try:
            for raw in source:
                row = _parse_row(raw)
                if row is not None and not row[1]:
                    target.write(raw)
            target.flush()
            os.fsync(target.fileno())
            shutil.copymode(real, target.name)
        except BaseException:
            os.unlink(target.name)
            raise
    os.replace(target.name, real)
