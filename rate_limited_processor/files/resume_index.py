"""The resume index: `<results>.index` beside a results file, 16 bytes per row (its identity, where it ends,
whether it is a failure), so that a rerun need not read every row back (see `resume`'s docstring)."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import struct
import sys
import tempfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from ..base.errors import ResumeError
from .rows import _parse_row

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


def sidecar_path(results_path: str | Path, kind: str) -> Path:
    """Where the tool keeps a file about a results file: `<results file>.<kind>` ("lock", "index") beside it.

    Symlinks are resolved, so every path to one results file names the same sidecar.
    """
    real = Path(results_path).resolve()
    return real.with_name(f"{real.name}.{kind}")


class _Identities(Protocol):
    """Where identities read from the index go (`resume._SortedBuilder`)."""

    def add(self, identity_: int) -> None: ...

    def extend(self, identities: array[int]) -> None: ...


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

    def read_into(self, done: _Identities, *, keep_failures: bool) -> tuple[int, int]:
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
