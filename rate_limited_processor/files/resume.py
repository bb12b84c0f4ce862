"""Resuming a job: which input lines already have a final row in the results file.

A rerun of the same command must not pay twice for a request that already has its result. Rows are
matched to input lines by a 64-bit identity computed the same way from an input line and from an output
row: the hash of the request's id when the input gives one (a Batch line's custom_id, or
metadata.custom_id), else of its body and metadata. Matching by content means a reordered input resumes
correctly (nothing can be matched to the wrong line), identical lines are counted as many times as they
occur, and an edited line is simply a new request; the row of its old version matches no input line
and is reported. Batch-output rows carry the identity in their "id".

The results file is checked before anything is sent, and it must be one: every complete line one of the
two row shapes the writer writes (see `_parse_row`). A file that is not (someone else's, the input under
another name) is refused and never changed. Only a last line without its newline that starts like a row
can be a write cut short: that one is cut off and its request sent again. Any other line that is not a
row stops the run before sending, naming the row.

The resume index. Reading back every row costs as much as the rows are large: 50,000 embedding rows are
800 MB. So the writer also appends, after each row, 16 bytes to `<results>.index` beside it: the row's
identity, where the row ends, and whether it is a failure. A rerun trusts the index when it is of this
results file (same inode), ends where a row of the file ends, and the first and last rows it names are
the rows there; then only what follows its last row is read (nothing, usually; a row or two after a
crash). Anything else (no index, an index of an older file, one ahead of the file or naming other rows)
means the whole file is read, as before, and the index is written anew. A file named like the index
that is not one of ours is refused and left alone, as the lock is.

In memory the done index is a sorted array of 8-byte identities plus one claim flag per row: about
9 bytes per finished request, and built without a moment of more (sorted in chunks, see `_SortedBuilder`).
"""

from __future__ import annotations

import os
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..base.errors import ResumeError
from .resume_index import _HEADER_SIZE as _HEADER_SIZE  # the index's layout, for tests that read it
from .resume_index import _RECORD as _RECORD
from .resume_index import (
    _RECORDS_PER_READ,
    INDEX_KIND,
    IndexWriter,
    _check_index_is_ours,
    _IndexOut,
    _rewrite_without_failures,
    _verified_index,
    sidecar_path,
)
from .rows import ROW_NESTING as ROW_NESTING
from .rows import (
    _could_be_a_torn_row,
    _parse_row,
    batch_row_id,
    identity,
    identity_of_id,
    identity_of_item,
    identity_of_result,
)

__all__ = [
    "ResumeError",
    "ResumeReport",
    "DoneIndex",
    "IndexWriter",
    "INDEX_KIND",
    "batch_row_id",
    "identity",
    "identity_of_id",
    "identity_of_item",
    "identity_of_result",
    "prepare_results_file",
    "sidecar_path",
]


class DoneIndex:
    """The identities of requests that already have a final row; each row can be claimed once."""

    __slots__ = ("_hashes", "_claimed", "claimed")

    #: Rows claimed so far: requests skipped because they already have their final row.
    claimed: int

    def __init__(self, identities: Iterable[int] | None = None) -> None:
        builder = _SortedBuilder()
        for identity_ in identities or ():
            builder.add(identity_)
        self._hashes = builder.build()
        self._claimed = bytearray(len(self._hashes))
        self.claimed = 0

    @classmethod
    def _of_sorted(cls, hashes: array[int]) -> DoneIndex:
        index = cls()
        index._hashes = hashes
        index._claimed = bytearray(len(hashes))
        return index

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


class _SortedBuilder:
    """Sorts millions of identities into an array without holding them all as Python ints.

    `sorted()` of a list of 10 million ints needs some 450 MB for a moment. Here each chunk of 65,536 is
    sorted alone and split by its top byte into 256 arrays (the identities are hashes: evenly spread); at the
    end each array is sorted and appended. At most one chunk or one bucket is ever a list of ints.
    """

    __slots__ = ("_chunk", "_buckets", "count")

    _SHIFT = 56

    def __init__(self) -> None:
        self._chunk: array[int] = array("Q")
        self._buckets: list[array[int]] = [array("Q") for _ in range(1 << (64 - self._SHIFT))]
        self.count = 0

    def add(self, identity_: int) -> None:
        self._chunk.append(identity_)
        self.count += 1
        if len(self._chunk) >= _RECORDS_PER_READ:
            self._spread()

    def extend(self, identities: array[int]) -> None:
        self._chunk.extend(identities)
        self.count += len(identities)
        if len(self._chunk) >= _RECORDS_PER_READ:
            self._spread()

    def build(self) -> array[int]:
        self._spread()
        ordered: array[int] = array("Q")
        for number, bucket in enumerate(self._buckets):
            ordered.extend(sorted(bucket))
            self._buckets[number] = array("Q")
        return ordered

    def _spread(self) -> None:
        chunk = sorted(self._chunk)
        self._chunk = array("Q")
        low = 0
        for number, bucket in enumerate(self._buckets):
            high = bisect_left(chunk, (number + 1) << self._SHIFT, low)
            if high > low:
                bucket.extend(chunk[low:high])
            low = high


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
    #: Rows read back from the results file itself; the others were known from the resume index.
    rows_read: int = 0


def prepare_results_file(path: str | Path, *, retry_failed: bool = False, repair: bool = True) -> tuple[DoneIndex, ResumeReport]:
    """Check the results file, repair a torn last line, drop failure rows if retrying them, and index it.

    A file that is absent or empty is a fresh start. Any other file must be a results file: every
    complete line one of the two row shapes this tool writes. Else ResumeError, and nothing is changed:
    a file that is not a results file is not ours to cut. Rows the resume index vouches for are not read
    again (see the module docstring). With `repair` (the run holds the output's lock), the results file is
    created if absent, and the index made to match it, ready for `IndexWriter`. With `repair=False` (a dry
    run) nothing is created or changed; the done index is the same.
    """
    path = Path(path)
    index_path = sidecar_path(path, INDEX_KIND)
    _check_index_is_ours(index_path)
    if not path.exists():
        if not repair:
            return DoneIndex(), ResumeReport(0, 0, False)
        path.touch()
    with open(path, "rb") as results:
        info = os.fstat(results.fileno())
        known = _verified_index(index_path, results, info)
        records: _IndexOut | None = None
        if repair:
            records = _IndexOut.append(index_path, known) if known is not None else _IndexOut.anew(index_path, info.st_ino)
        try:
            done = _SortedBuilder()
            failures = failures_kept = 0
            if known is not None:
                failures, failures_kept = known.read_into(done, keep_failures=not retry_failed)
            scan = _Scan(results, path, start=known.end if known else 0, rows_before=known.rows if known else 0)
            for row_identity, end, failed in scan:
                if records is not None:
                    records.add(row_identity, end, failed)
                if retry_failed and failed:
                    failures += 1
                    continue
                failures_kept += failed
                done.add(row_identity)
            if scan.torn and repair:
                with open(path, "r+b") as file:
                    file.truncate(scan.good_end)
            if records is not None:
                records.commit()
        finally:
            if records is not None:
                records.close()
    if failures and repair:
        _rewrite_without_failures(path, index_path)
    report = ResumeReport(done.count, failures, scan.torn, failures_kept, rows_read=scan.rows)
    return DoneIndex._of_sorted(done.build()), report


# -- reading the rows ---------------------------------------------------------------------------------


class _Scan:
    """The rows of a results file from byte `start` on, as (identity, end offset, is it a failure).

    Raises ResumeError for a line that is not a row; stops at a torn last line (`torn`). `good_end` is the
    offset just past the last complete row, `rows` how many were read.
    """

    def __init__(self, results: IO[bytes], path: Path, *, start: int, rows_before: int) -> None:
        self._results, self._path, self._rows_before = results, path, rows_before
        self.good_end = start
        self.rows = 0
        self.torn = False

    def __iter__(self) -> Iterator[tuple[int, int, bool]]:
        self._results.seek(self.good_end)
        for raw in self._results:
            row_number = self._rows_before + self.rows + 1
            if not raw.endswith(b"\n"):
                # Only the last line can lack its newline; it is torn if it is the start of a row we write.
                if not _could_be_a_torn_row(raw):
                    raise ResumeError(_not_a_row(self._path, row_number, rows_before=row_number - 1))
                self.torn = True
                return
            row = _parse_row(raw)
            if row is None:  # a complete line that is not a row is damage, never a torn write
                raise ResumeError(_not_a_row(self._path, row_number, rows_before=row_number - 1))
            self.good_end += len(raw)
            self.rows += 1
            yield row[0], self.good_end, row[1]


def _not_a_row(path: Path, row_number: int, *, rows_before: int) -> str:
    if rows_before == 0:
        return (
            f"{path} is not a results file of this tool (its line {row_number} is not a result row); it is left untouched: "
            "choose another output file, or move this one aside"
        )
    return f"{path}: row {row_number} is not a result row; cannot resume safely (move the file aside to start over)"


