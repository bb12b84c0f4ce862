"""What `--mode batch` keeps beside the results (`<results>.batches`): each part's lines, its input file, its batches.

A part is a set of input lines sent as one Batch input file. It is recorded before anything about it is sent,
and again after each step (uploaded: its file id; submitted: its batch ids), always by replacing the whole
file atomically. So a run killed at any point leaves a record a rerun can trust: it resumes the batches
already created, finds an upload or a batch the killed run made but did not record (by the part's token,
which names the file and rides in the batch's metadata; for Message Batches, which have neither, by when
its create began and its custom_ids: `message_batches.py`), and never sends a line twice.

No credentials are kept: the API root (scheme, host, path), ids, line numbers and token counts only.
"""

from __future__ import annotations

import bisect
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..base import strict_json
from ..base.atomic_write import write_json_atomically
from ..base.errors import ResumeError

__all__ = ["Part", "BatchState", "line_ranges", "STATE_VERSION", "PART_METADATA_KEY"]

STATE_VERSION = 1
#: The batch metadata key that carries a part's token.
PART_METADATA_KEY = "rate_limited_processor_part"


@dataclass(slots=True)
class Part:
    """One Batch input file's worth of lines, and what has been done with it."""

    number: int
    #: Unique to this part: it names the uploaded file and rides in its batches' metadata.
    token: str
    #: The Batch API endpoint ("/v1/chat/completions") and the one model of its lines (None: they name none).
    endpoint: str
    model: str | None
    #: Input line numbers, as inclusive ranges.
    lines: list[list[int]]
    count: int
    #: Estimated tokens: prompts, and completion budgets.
    input_tokens: int = 0
    output_tokens: int = 0
    file_id: str | None = None
    #: Every batch created for it, the current one last (one refused for the enqueued-token limit is followed by another).
    batch_ids: list[str] = field(default_factory=list)
    #: Its results are written (every line has its row).
    done: bool = False
    #: Message Batches (no metadata, no input file): when (epoch seconds, this machine's clock) its create call
    #: was about to be made, recorded first, so a rerun looks for an unrecorded batch only among those created since...
    create_started_at: float | None = None
    #: ...and the batches such a look found and proved not its (their results carried none of its custom_ids).
    passed_over: list[str] = field(default_factory=list)
    #: Its lines went online (`--mode auto`'s rescue) before any batch of it ran: never batched again, so that no
    #: line answered online is paid for again in a batch.
    online: bool = False

    @property
    def filename(self) -> str:
        return f"{self.token}.jsonl"

    @property
    def batch_id(self) -> str | None:
        return self.batch_ids[-1] if self.batch_ids else None

    def line_numbers(self) -> Iterator[int]:
        for start, end in self.lines:
            yield from range(start, end + 1)

    def describe(self) -> str:
        first, last = self.lines[0][0], self.lines[-1][1]
        span = f"line {first}" if first == last else f"lines {first}-{last}"
        gaps = ", not all between" if len(self.lines) > 1 else ""
        return f"part {self.number} ({self.count:,} {'line' if self.count == 1 else 'lines'}, {span}{gaps})"


def line_ranges(numbers: Iterable[int]) -> list[list[int]]:
    """Ascending line numbers as inclusive ranges: 1,2,3,7 -> [[1, 3], [7, 7]]."""
    ranges: list[list[int]] = []
    for number in numbers:
        if ranges and number == ranges[-1][1] + 1:
            ranges[-1][1] = number
        else:
            ranges.append([number, number])
    return ranges


class BatchState:
    """The parts of one results file, loaded from and saved to its sidecar."""

    __slots__ = ("path", "api_root", "parts", "_starts", "_ranges")

    def __init__(self, path: Path, api_root: str, parts: list[Part] | None = None) -> None:
        self.path = path
        self.api_root = api_root
        self.parts = parts or []
        # Every part's ranges, sorted by their first line: which part holds a line, by bisection.
        ranges = sorted((start, end, part) for part in self.parts for start, end in part.lines)
        self._starts = [start for start, _, _ in ranges]
        self._ranges = ranges

    def __repr__(self) -> str:
        return f"BatchState({str(self.path)!r}, {len(self.parts)} parts)"

    @classmethod
    def load(cls, path: Path, api_root: str) -> BatchState:
        """The recorded state, or an empty one; ResumeError for a file that is not ours or names another API."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path, api_root)
        except (OSError, UnicodeDecodeError) as error:
            raise ResumeError(f"cannot read {path}: {error}") from None
        try:
            record = strict_json.loads(text)
            if record.get("version") != STATE_VERSION:
                raise ValueError(f"version {record.get('version')!r}")
            parts = [Part(**part) for part in record["parts"]]
            recorded_root = record["api_root"]
        except (strict_json.InvalidJSON, AttributeError, KeyError, TypeError, ValueError) as error:
            raise ResumeError(f"{path} is not a batch record of this tool ({error}); it is left untouched (move it aside to start over)") from None
        if recorded_root != api_root:
            raise ResumeError(
                f"{path} records batches created at {recorded_root}, not {api_root}; rerun with that --request_url, or move the file aside"
            )
        return cls(path, api_root, parts)

    def save(self) -> None:
        write_json_atomically(self.path, {"version": STATE_VERSION, "api_root": self.api_root, "parts": [asdict(part) for part in self.parts]})

    def remove(self) -> None:
        """Every line has its row: nothing is left to resume."""
        self.path.unlink(missing_ok=True)

    def new_part(self, endpoint: str, model: str | None, lines: list[int], input_tokens: int, output_tokens: int) -> Part:
        number = max((part.number for part in self.parts), default=0) + 1
        part = Part(number, f"rlp-{secrets.token_hex(8)}-part-{number:04d}", endpoint, model, line_ranges(lines), len(lines), input_tokens, output_tokens)
        self.parts.append(part)
        return part

    def batch_ids(self) -> set[str]:
        """Every batch a part of this record names (none of them is another part's, found by listing)."""
        return {batch_id for part in self.parts for batch_id in part.batch_ids}

    def part_holding(self, line: int) -> Part | None:
        """The recorded part (as loaded) that holds this input line, if any."""
        position = bisect.bisect_right(self._starts, line) - 1
        if position < 0:
            return None
        _, end, part = self._ranges[position]
        return part if line <= end else None
