"""What the benchmarks share: request generators and the figures they report.

Kept apart from `tests/` on purpose: benchmarks must not import test code, and these generators differ
from the test helpers in one way that matters here: the chat model is "gpt-4", whose encoding
(cl100k_base) ships with the `offline` extra, so no run waits on (or warns about) a tokenizer download.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_MODEL",
    "Figure",
    "chat_request",
    "embedding_request",
    "format_table",
    "without_metadata",
    "write_jsonl",
]

#: Chat model used throughout: tokenized with cl100k_base, which is bundled, so offline runs are exact.
CHAT_MODEL = "gpt-4"
EMBEDDING_MODEL = "text-embedding-3-small"
_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly", "box", "jolly", "zebras"]


def chat_request(i: int, *, max_tokens: int = 8) -> dict[str, Any]:
    """A short chat request (~40 tokens with its budget) carrying metadata, as a requests file would."""
    return {
        "model": CHAT_MODEL,
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": f"Question number {i}: what is {i} + {i}?"},
        ],
        "max_tokens": max_tokens,
        "metadata": {"id": i},
    }


def embedding_request(i: int, *, seed: int = 0) -> dict[str, Any]:
    """An embedding request of 5-60 words (about 7-70 tokens), so token counts vary from request to request."""
    rng = random.Random(f"{seed}-{i}")
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(5, 60)))
    return {"model": EMBEDDING_MODEL, "input": f"document {i}: {words}", "metadata": {"id": i}}


def without_metadata(request: dict[str, Any]) -> dict[str, Any]:
    """The body the processor actually sends (it strips "metadata")."""
    return {key: value for key, value in request.items() if key != "metadata"}


def write_jsonl(path: Path, lines: Iterable[dict[str, Any]]) -> Path:
    with open(path, "w", encoding="utf-8") as file:
        for line in lines:
            file.write(json.dumps(line) + "\n")
    return path


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured figure against its target, for the summary `run_all` prints."""

    name: str
    measured: float
    #: "<=" or ">=": which side of `target` passes.
    op: str
    target: float
    #: Printed after the numbers: "" for a ratio, "%", " MB".
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.measured <= self.target if self.op == "<=" else self.measured >= self.target

    def line(self) -> str:
        verdict = "pass" if self.passed else "MISS"
        target = f"{self.op} {self.target:g}{self.unit}"
        return f"{self.name:<42} {self.measured:>8.3f}{self.unit:<3}  target {target:<10} {verdict}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain fixed-width table: right-aligned columns, one header line."""
    cells = [list(map(str, header)), *([str(cell) for cell in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
