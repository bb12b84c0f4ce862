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

import contextlib
import hashlib
import os
import re
import shutil
import stat
import struct
import sys
import tempfile
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..base import strict_json
from ..base.errors import ResumeError
from ..base.models import APIRequest, RejectedLine, RequestResult

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

_BATCH_ID_PREFIX = "batch_req_"
_BATCH_ID = re.compile(re.escape(_BATCH_ID_PREFIX) + "([0-9a-f]{16})")
#: How a Batch-output row starts, as the writer writes it (json.dumps' default separators).
_BATCH_ROW_START = b'{"id": "' + _BATCH_ID_PREFIX.encode()
_BATCH_ROW_KEYS = frozenset({"id", "custom_id", "response", "error"})
#: Levels a row adds around what it holds: a Batch row's body sits two levels down.
ROW_NESTING = 2

#: The sidecar kind of the resume index: `<results>.index`.
INDEX_KIND = "index"
#: The index starts with this line, then the results file's inode (8 bytes), then one record per row.
_INDEX_MAGIC = b"rate_limited_processor resume index, version 1\n"
_INODE = struct.Struct("<Q")
_HEADER_SIZE = len(_INDEX_MAGIC) + _INODE.size
#: A record: the row's identity, and the offset just past its newline with the top bit set for a failure row.
_RECORD = struct.Struct("<QQ")
_FAILED = 1 << 63
#: Records read at a time (1 MB).
_RECORDS_PER_READ = 65_536


def identity(request: Any, metadata: Any) -> int:
    """The 64-bit content identity of a request with its metadata (as written in an output row)."""
    return int.from_bytes(hashlib.blake2b(strict_json.canonical([request, metadata]), digest_size=8).digest(), "big")


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


def sidecar_path(results_path: str | Path, kind: str) -> Path:
    """Where the tool keeps a file about a results file: `<results file>.<kind>` ("lock", "index") beside it.

    Symlinks are resolved, so every path to one results file names the same sidecar.
    """
    real = Path(results_path).resolve()
    return real.with_name(f"{real.name}.{kind}")


class IndexWriter:
    """Appends a record to the resume index for each row the writer appends (see `ResultWriter`).

    `prepare_results_file` must have made the index match the results file, whose size is `results_size`:
    anything else is refused here, so a wrong index is never extended.
    """

    __slots__ = ("path", "_file", "_end")

    def __init__(self, results_path: str | Path, results_size: int) -> None:
        self.path = sidecar_path(results_path, INDEX_KIND)
        self._file: IO[bytes] = open(self.path, "r+b")  # noqa: SIM115 (closed by close(), for the whole run)
        try:
            size = os.fstat(self._file.fileno()).st_size
            end = _record_end(os.pread(self._file.fileno(), _RECORD.size, size - _RECORD.size)) if size > _HEADER_SIZE else 0
            if (size - _HEADER_SIZE) % _RECORD.size or end != results_size or os.pread(self._file.fileno(), len(_INDEX_MAGIC), 0) != _INDEX_MAGIC:
                raise ResumeError(f"{self.path} is out of step with {results_path}; prepare_results_file makes them match")
            self._file.seek(0, os.SEEK_END)
        except BaseException:
            self._file.close()
            raise
        self._end = results_size

    def __repr__(self) -> str:
        return f"IndexWriter({str(self.path)!r}, end={self._end})"

    def add(self, identity_: int, row_length: int, *, failed: bool) -> None:
        """The row just written (and flushed): its identity, its length in bytes with the newline, whether it is
        a failure.

        Records are buffered, not flushed one by one: an index behind its file costs a rerun only the reading of
        the rows after its last record, and a record torn by a crash is cut off. It is never ahead of the file,
        because a row is flushed before its record is written.
        """
        self._end += row_length
        self._file.write(_RECORD.pack(identity_, self._end | _FAILED if failed else self._end))

    def close(self) -> None:
        try:
            self._file.close()  # the records still buffered are written now: a full disk is said with the index's name
        except OSError as error:
            if error.filename is None:
                error.filename = str(self.path)
            raise


# -- reading the index back ------------------------------------------------------------------------


def _check_index_is_ours(index_path: Path) -> None:
    """A file where the index goes must be an index of this tool (or empty): anything else is left alone."""
    try:
        info = os.lstat(index_path)
    except FileNotFoundError:
        return
    refused = ResumeError(f"{index_path} exists and is not a resume index of this tool; it is left untouched (move it aside if it is not needed)")
    if not stat.S_ISREG(info.st_mode):
        raise refused
    if info.st_size:
        with open(index_path, "rb") as file:
            if file.read(len(_INDEX_MAGIC)) != _INDEX_MAGIC:
                raise refused


def _record_end(record: bytes) -> int:
    return int(_RECORD.unpack(record)[1] & ~_FAILED)


@dataclass(frozen=True, slots=True)
class _KnownRows:
    """The rows an index vouches for: the first `rows` rows of the results file, ending at byte `end`."""

    index_path: Path
    rows: int
    end: int

    def read_into(self, done: _SortedBuilder, *, keep_failures: bool) -> tuple[int, int]:
        """Add the identities to `done` (failure rows only if `keep_failures`); (failure rows left out, kept)."""
        left_out = kept = 0
        with open(self.index_path, "rb") as file:
            file.seek(_HEADER_SIZE)
            remaining = self.rows
            while remaining:
                data = file.read(_RECORD.size * min(remaining, _RECORDS_PER_READ))
                remaining -= len(data) // _RECORD.size
                numbers = array("Q", data)
                if sys.byteorder == "big":
                    numbers.byteswap()
                # A failure row's end has its top bit set: the last byte of its record, little-endian, is >= 0x80.
                failures = len(data[_RECORD.size - 1 :: _RECORD.size].translate(None, _LOW_BYTES))
                if not failures or keep_failures:
                    done.extend(numbers[0::2])
                    kept += failures
                else:
                    for position in range(0, len(numbers), 2):
                        if numbers[position + 1] & _FAILED:
                            left_out += 1
                        else:
                            done.add(numbers[position])
        return left_out, kept


_LOW_BYTES = bytes(range(0x80))


def _verified_index(index_path: Path, results: IO[bytes], info: os.stat_result) -> _KnownRows | None:
    """The rows the index vouches for, if it is this file's and agrees with it; else None (read it all).

    It agrees when its first and last records are the rows there: each a whole line, ending where the
    record says, with the identity and the kind (success or failure) it says.
    """
    try:
        index = open(index_path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        return None
    with index:
        header = index.read(_HEADER_SIZE)
        if len(header) < _HEADER_SIZE or _INODE.unpack_from(header, len(_INDEX_MAGIC))[0] != info.st_ino:
            return None
        rows = (os.fstat(index.fileno()).st_size - _HEADER_SIZE) // _RECORD.size

        def record(number: int) -> tuple[int, int]:
            return _RECORD.unpack(os.pread(index.fileno(), _RECORD.size, _HEADER_SIZE + number * _RECORD.size))

        if rows == 0:
            return _KnownRows(index_path, 0, 0)
        first, last = record(0), record(rows - 1)
        before_last = record(rows - 2)[1] & ~_FAILED if rows > 1 else 0
    for start, (identity_, end_and_kind) in ((0, first), (before_last, last)):
        end = end_and_kind & ~_FAILED
        if not start <= end <= info.st_size or (start and os.pread(results.fileno(), 1, start - 1) != b"\n"):
            return None
        raw = os.pread(results.fileno(), end - start, start)
        row = _parse_row(raw) if raw.endswith(b"\n") and raw.count(b"\n") == 1 else None
        if row != (identity_, bool(end_and_kind & _FAILED)):
            return None
    return _KnownRows(index_path, rows, last[1] & ~_FAILED)


class _IndexOut:
    """Where a prepare writes the index's records: appended to an index that is verified, or a new one
    (a temporary file beside it, replacing it on `commit`)."""

    __slots__ = ("_file", "_target", "_temporary")

    def __init__(self, file: IO[bytes], target: Path, temporary: Path | None) -> None:
        self._file, self._target, self._temporary = file, target, temporary

    @classmethod
    def append(cls, index_path: Path, known: _KnownRows) -> _IndexOut:
        file = open(index_path, "r+b")  # noqa: SIM115 (closed by close())
        file.truncate(_HEADER_SIZE + known.rows * _RECORD.size)  # a record torn by a crash goes
        file.seek(0, os.SEEK_END)
        return cls(file, index_path, None)

    @classmethod
    def anew(cls, index_path: Path, inode: int) -> _IndexOut:
        file = tempfile.NamedTemporaryFile("wb", dir=index_path.parent, prefix=f".{index_path.name}.", delete=False)  # noqa: SIM115
        file.write(_INDEX_MAGIC + _INODE.pack(inode))
        return cls(file, index_path, Path(file.name))

    def add(self, identity_: int, end: int, failed: bool) -> None:
        self._file.write(_RECORD.pack(identity_, end | _FAILED if failed else end))

    def commit(self) -> None:
        self._file.flush()
        if self._temporary is not None:
            os.replace(self._temporary, self._target)
            self._temporary = None

    def close(self) -> None:
        self._file.close()
        if self._temporary is not None:  # not committed: the old index stays as it was
            with contextlib.suppress(OSError):
                os.unlink(self._temporary)


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


def _could_be_a_torn_row(raw: bytes) -> bool:
    """The start of a row as the writer writes it: a cookbook row, or a Batch-output line."""
    return raw.startswith((b"[", _BATCH_ROW_START)) or _BATCH_ROW_START.startswith(raw)


def _parse_row(raw: bytes) -> tuple[int, bool] | None:
    """A row's (identity, is it a failure), for either output shape; None if it is not a result row.

    A cookbook row is `[request, response-object or list of error strings(, metadata)]`; a Batch-output
    row is an object with "id" ("batch_req_" and 16 hex digits), "custom_id", "response" and "error".
    """
    try:
        row = strict_json.loads(raw, max_depth=strict_json.MAX_DEPTH + ROW_NESTING)
    except strict_json.InvalidJSON:
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


def _rewrite_without_failures(path: Path, index_path: Path) -> None:
    """Keep only success rows, replacing the file (and its index) atomically so a crash here loses nothing.

    The index, which matches the file by now, says which rows are failures: nothing is parsed. The real
    file is replaced (a symlink to it stays a symlink), with its permissions kept. A crash between the two
    replacements leaves an index of the old file, which the next run sees and reads the file anew.
    """
    real = path.resolve()
    with (
        open(real, "rb") as source,
        open(index_path, "rb") as old_index,
        tempfile.NamedTemporaryFile("wb", dir=real.parent, prefix=f".{real.name}.", delete=False) as target,
        tempfile.NamedTemporaryFile("wb", dir=index_path.parent, prefix=f".{index_path.name}.", delete=False) as new_index,
    ):
        try:
            new_index.write(_INDEX_MAGIC + _INODE.pack(os.fstat(target.fileno()).st_ino))
            old_index.seek(_HEADER_SIZE)
            end = 0
            for raw in source:
                identity_, old_end = _RECORD.unpack(old_index.read(_RECORD.size))
                if old_end & _FAILED:
                    continue
                target.write(raw)
                end += len(raw)
                new_index.write(_RECORD.pack(identity_, end))
            target.flush()
            os.fsync(target.fileno())
            new_index.flush()
            shutil.copymode(real, target.name)
        except BaseException:
            os.unlink(target.name)
            os.unlink(new_index.name)
            raise
    os.replace(target.name, real)
    os.replace(new_index.name, index_path)
