"""Results as Parquet (`--output_format parquet`, the `parquet` extra): a directory of part files, resumable.

Why. An embeddings job of ten million rows writes about 150 GB of JSON, each float spelled in 19 characters.
In Parquet a float is 4 bytes (float32, as the API computes them), and a data lake reads the files as they are.

Layout. `--save_filepath results.parquet` is a directory (as Spark, Ray and pandas write datasets) of
`part-000001.parquet`, `part-000002.parquet`, ...: one file per row group, each written to a hidden temporary
name and renamed when complete, so every part there is whole. A row group closes at `ROWS_PER_GROUP` rows,
`BYTES_PER_GROUP` bytes or `SECONDS_PER_GROUP` seconds after its first row, whichever comes first, so memory
stays bounded however long the run.

Columns, one row per request as in the JSONL output:

- `id` (uint64): the request's resume identity, as `resume.identity_of_result` makes it for JSONL rows.
- `failed` (bool), `status` (int32, the last HTTP status; null without an answer), `custom_id` (string).
- `request`, `response`, `metadata`: JSON text (null: no response, no metadata), since their shapes vary row by row.
- `embeddings` (list of lists of float32): an embeddings answer's vectors, in the order of its `data`; they are
  then left out of `response`'s `data` items. Null for other answers (and for base64-encoded vectors, which
  stay in `response`).
- `errors` (list of strings): a failure's errors, as the JSONL row's list; null on success.

Resuming. The resume index of a Parquet output is its own `id` and `failed` columns: a rerun reads only those
(9 bytes a row, columnar) from each part, never the answers, and skips the requests found there, as for JSONL.
A crash costs the requests in flight and the rows of the row group not yet written (at most one group): those
were answered, possibly paid, and are sent again by the rerun. Leftover temporary files of a killed run are
removed. `--retry_failed` rewrites the parts that hold failure rows without them (each part atomically).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import time
from array import array
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from ..base import strict_json
from ..base.errors import ResumeError, UsageError
from ..base.models import RequestResult, ResultKind
from .output_file import OutputLock
from .resume import DoneIndex, ResumeReport, identity_of_result
from .side_files import still_names

__all__ = [
    "ROWS_PER_GROUP",
    "BYTES_PER_GROUP",
    "SECONDS_PER_GROUP",
    "ParquetResultWriter",
    "ParquetOutputLock",
    "check_parquet_output",
    "prepare_parquet_results",
    "split_embeddings",
    "require_pyarrow",
]

#: A row group (one part file) closes at this many rows...
ROWS_PER_GROUP = 10_000
#: ...or this many bytes buffered (about 10,000 rows of 1,536-float embeddings)...
BYTES_PER_GROUP = 64 * 1024**2
#: ...or this many seconds after its first row, so a slow run's rows do not wait long in memory.
SECONDS_PER_GROUP = 60.0

_PART = re.compile(r"part-(\d{6,})\.parquet")
_TEMPORARY = re.compile(r"\.part-\d{6,}\.parquet\.tmp")
#: In every part's key-value metadata: how a rerun knows a part is this tool's.
_MARK_KEY = b"rate_limited_processor"
_MARK_VALUE = b"results, version 1"
_SUCCEEDED = ResultKind.SUCCEEDED
#: JSON text shrinks 5-10x under zstd; float32 vectors about 7%, for little CPU (`benchmarks/parquet_output.py`).
_COMPRESSION = "zstd"


def require_pyarrow() -> Any:
    """pyarrow, or a UsageError naming the extra to install."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError("--output_format parquet needs the parquet extra: pip install 'rate_limited_processor[parquet]'") from None
    return pyarrow


def _schema() -> Any:
    pa = require_pyarrow()
    return pa.schema(
        [
            ("id", pa.uint64()),
            ("failed", pa.bool_()),
            ("status", pa.int32()),
            ("custom_id", pa.string()),
            ("request", pa.string()),
            ("response", pa.string()),
            ("embeddings", pa.list_(pa.list_(pa.float32()))),
            ("errors", pa.list_(pa.string())),
            ("metadata", pa.string()),
        ],
        metadata={_MARK_KEY: _MARK_VALUE},
    )


def split_embeddings(response: Any) -> tuple[Any, list[array[float]] | None]:
    """An embeddings answer's vectors as float32 arrays, and the answer without them; (answer, None) for any other."""
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list) or not data:
        return response, None
    vectors: list[array[float]] = []
    for item in data:
        vector = item.get("embedding") if isinstance(item, dict) else None
        if not isinstance(vector, list):
            return response, None
        try:
            vectors.append(array("f", vector))
        except (TypeError, OverflowError):  # not numbers, or beyond float32
            return response, None
    rest = dict(response)
    rest["data"] = [{key: value for key, value in item.items() if key != "embedding"} for item in data]
    return rest, vectors


def _json(value: Any) -> str:
    return strict_json.dumps(value, default=str).decode()


class ParquetResultWriter:
    """Buffers rows and writes each full row group as a part file of its own (see the module docstring).

    The same calls as `request_io.ResultWriter`: `write(result)` for each final result, `close()` at the end
    (which writes what is buffered). After a failed write it refuses further rows, as the JSONL writer does.
    """

    def __init__(
        self, path: str | Path, *, rows_per_group: int = ROWS_PER_GROUP, bytes_per_group: int = BYTES_PER_GROUP,
        seconds_per_group: float = SECONDS_PER_GROUP, clock: Any = time.monotonic,
    ) -> None:
        self.pa = require_pyarrow()
        self.path = Path(path)
        self.path.mkdir(exist_ok=True)
        self.rows_per_group, self.bytes_per_group, self.seconds_per_group = rows_per_group, bytes_per_group, seconds_per_group
        self._clock = clock
        self._schema = _schema()
        self._next_part = 1 + max((int(match[1]) for match in map(_PART.fullmatch, os.listdir(self.path)) if match), default=0)
        self._failed = False
        held = os.stat(self.path)
        self._identity = (held.st_dev, held.st_ino)
        #: Set (once) when the path no longer names the directory this run began writing into: what happened.
        self.moved: str | None = None
        #: Parts written by this writer.
        self.parts = 0
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = []
        self._failed_flags: list[bool] = []
        self._statuses: list[int | None] = []
        self._custom_ids: list[str | None] = []
        self._requests: list[str] = []
        self._responses: list[str | None] = []
        self._embeddings: list[list[array[float]] | None] = []
        self._errors: list[list[str] | None] = []
        self._metadata: list[str | None] = []
        self._bytes = 0
        self._first_at: float | None = None

    def write(self, result: RequestResult) -> None:
        if self._failed:
            raise OSError(f"an earlier write to {self.path} failed")
        succeeded = result.kind is _SUCCEEDED
        response, vectors = split_embeddings(result.response) if succeeded else (None, None)
        request = _json(result.request)
        response_text = _json(response) if succeeded else None
        metadata = _json(result.metadata) if result.metadata is not None else None
        self._ids.append(identity_of_result(result))
        self._failed_flags.append(not succeeded)
        self._statuses.append(result.status)
        self._custom_ids.append(result.custom_id)
        self._requests.append(request)
        self._responses.append(response_text)
        self._embeddings.append(vectors)
        self._errors.append(None if succeeded else list(result.errors))
        self._metadata.append(metadata)
        self._bytes += len(request) + len(response_text or "") + len(metadata or "") + 4 * sum(map(len, vectors or ()))
        now = self._clock()
        if self._first_at is None:
            self._first_at = now
        if len(self._ids) >= self.rows_per_group or self._bytes >= self.bytes_per_group or now - self._first_at >= self.seconds_per_group:
            self.flush()

    def check_moved(self) -> str | None:
        """Whether the path still names the directory this run began with (a cleanup or a rename takes it away)."""
        if still_names(self.path, self._identity):
            return None
        return (f"{self.path} was moved or deleted during the run: the parts written to it went with it, and the rows still "
                f"held went to a new {self.path} (part numbers continue, so none clash); move those parts into the old "
                f"directory and put it back as {self.path} before a rerun, or the rerun pays for those lines again")

    def flush(self) -> None:
        """Write the rows buffered as one part file (nothing when none is)."""
        if not self._ids:
            return
        if self.moved is None:  # checked once a part, before writing it where the run's directory no longer is
            self.moved = self.check_moved()
        if self.moved is not None:  # the rows held are paid for: into a fresh directory rather than lost
            self.path.mkdir(exist_ok=True)
        try:
            table = self._table()
            name = f"part-{self._next_part:06d}.parquet"
            temporary = self.path / f".{name}.tmp"
            import pyarrow.parquet as pq

            pq.write_table(table, temporary, compression=_COMPRESSION, use_dictionary=["custom_id"], write_statistics=["id", "failed", "status"])
            os.replace(temporary, self.path / name)
        except OSError:
            self._failed = True
            raise
        self._next_part += 1
        self.parts += 1
        self._reset()

    def _table(self) -> Any:
        pa = self.pa
        columns = [
            pa.array(self._ids, pa.uint64()),
            pa.array(self._failed_flags, pa.bool_()),
            pa.array(self._statuses, pa.int32()),
            pa.array(self._custom_ids, pa.string()),
            pa.array(self._requests, pa.string()),
            pa.array(self._responses, pa.string()),
            self._embedding_column(),
            pa.array(self._errors, pa.list_(pa.string())),
            pa.array(self._metadata, pa.string()),
        ]
        return pa.Table.from_arrays(columns, schema=self._schema)

    def _embedding_column(self) -> Any:
        """list<list<float32>> from the rows' float32 arrays, copied once into one buffer (no Python float per value)."""
        pa = self.pa
        values: array[float] = array("f")
        inner = array("i", [0])
        outer = array("i", [0])
        missing = []
        rows = self._embeddings
        for number, vectors in enumerate(rows):
            missing.append(vectors is None)
            for vector in vectors or ():
                values.extend(vector)
                inner.append(len(values))
            outer.append(len(inner) - 1)
            rows[number] = None  # copied: at most one copy of the group's vectors is held at a time
        if sys.byteorder == "big":
            values.byteswap()
        floats = pa.Array.from_buffers(pa.float32(), len(values), [None, pa.py_buffer(values)])
        vectors_array = pa.ListArray.from_arrays(pa.array(inner, pa.int32()), floats)
        return pa.ListArray.from_arrays(pa.array(outer, pa.int32()), vectors_array, mask=pa.array(missing, pa.bool_()))

    def close(self) -> None:
        if not self._failed:
            self.flush()

    def __enter__(self) -> ParquetResultWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class ParquetOutputLock(OutputLock):
    """`OutputLock` for a results directory: the sidecar lock beside it, and a lock on the directory itself."""

    def _open_results(self) -> int:
        self.path.mkdir(exist_ok=True)
        return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)


def check_parquet_output(save_path: str | Path) -> None:
    """Refuse before anything is sent an output that cannot be a Parquet results directory."""
    require_pyarrow()
    path = Path(save_path)
    try:
        info = path.stat()
    except FileNotFoundError:
        parent = path.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(f"cannot create {path}: the directory {parent} does not exist or is not writable") from None
        return
    if not stat.S_ISDIR(info.st_mode):
        raise UsageError(f"{path} is not a directory; Parquet results are a directory of part files (e.g. results.parquet/), created if missing")
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: permission denied")


def _parts(path: Path, *, repair: bool) -> tuple[list[Path], bool]:
    """The part files in order, and whether a killed run's temporary file was found (removed with `repair`).
    Anything else in the directory is not ours: refused."""
    parts: list[tuple[int, Path]] = []
    leftovers = False
    for name in sorted(os.listdir(path)):
        if _TEMPORARY.fullmatch(name):
            leftovers = True
            if repair:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path / name)
            continue
        match = _PART.fullmatch(name)
        if match is None:
            raise ResumeError(f"{path} holds {name[:80]!r}, which is not a part of this tool's results; it is left untouched (choose another output)")
        parts.append((int(match[1]), path / name))
    return [part for _, part in sorted(parts)], leftovers


def _read_index(part: Path) -> tuple[list[int], list[bool]]:
    """A part's `id` and `failed` columns (its resume index), after checking it is one of ours."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(part)
        metadata = file.schema_arrow.metadata or {}
        if metadata.get(_MARK_KEY) != _MARK_VALUE:
            raise ResumeError(f"{part} is not a part of this tool's results; it is left untouched (move it aside)")
        table = file.read(columns=["id", "failed"])
    except ResumeError:
        raise
    except Exception as error:  # pyarrow's errors for a damaged file are many (ArrowInvalid, OSError)
        raise ResumeError(f"{part} cannot be read ({type(error).__name__}: {error}); cannot resume safely (move it aside to send its rows again)") from None
    return table.column("id").to_pylist(), table.column("failed").to_pylist()


def prepare_parquet_results(path: str | Path, *, retry_failed: bool = False, repair: bool = True) -> tuple[DoneIndex, ResumeReport]:
    """`resume.prepare_results_file` for a Parquet results directory: which requests already have their row.

    Reads each part's `id` and `failed` columns only. With `retry_failed` (and `repair`), parts holding failure
    rows are rewritten without them, each atomically. With `repair=False` (a dry run) nothing is changed.
    """
    require_pyarrow()
    path = Path(path)
    if not path.exists():
        if repair:
            path.mkdir()
        return DoneIndex(), ResumeReport(0, 0, False)
    if not path.is_dir():
        raise ResumeError(f"{path} is not a directory of Parquet results; it is left untouched (choose another output)")
    parts, leftovers = _parts(path, repair=repair)
    done: list[int] = []
    failures_removed = failures_kept = 0
    for part in parts:
        ids, failed = _read_index(part)
        failures = sum(failed)
        if retry_failed and failures:
            failures_removed += failures
            if repair:
                _rewrite_without_failures(part)
            done.extend(identity_ for identity_, bad in zip(ids, failed, strict=True) if not bad)
        else:
            failures_kept += failures
            done.extend(ids)
    report = ResumeReport(len(done), failures_removed, leftovers, failures_kept, rows_read=0)
    return DoneIndex(done), report


def _rewrite_without_failures(part: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(part)
    kept = table.filter(pc.invert(table.column("failed")))
    if kept.num_rows == 0:
        os.unlink(part)
        return
    temporary = part.with_name(f".{part.name}.tmp")
    pq.write_table(kept, temporary, compression=_COMPRESSION)
    os.replace(temporary, part)


def read_parquet_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every row of a Parquet results directory, as Python values (tests, small outputs; use pyarrow or a data
    frame for large ones)."""
    import pyarrow.parquet as pq

    parts, _ = _parts(Path(path), repair=False)
    for part in parts:
        yield from pq.read_table(part).to_pylist()
