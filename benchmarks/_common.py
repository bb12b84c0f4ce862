"""What the benchmarks share: request generators, a mock API in its own process, and the figures they report.

Kept apart from `tests/` on purpose: benchmarks must not import test code, and these generators differ
from the test helpers in one way that matters here: the chat model is "gpt-4", whose encoding
(cl100k_base) ships with the `offline` extra, so no run waits on (or warns about) a tokenizer download.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_MODEL",
    "Figure",
    "MockProcess",
    "chat_request",
    "embedding_request",
    "format_table",
    "without_metadata",
    "write_jsonl",
]

#: Chat model used throughout: tokenized with cl100k_base, which is bundled, so offline runs are exact.
CHAT_MODEL = "gpt-4"
EMBEDDING_MODEL = "text-embedding-3-small"
_WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly box jolly zebras".split()


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


class MockProcess:
    """The mock API in a child process, so its CPU is not charged to the client being measured.

    Usage::

        with MockProcess() as mock:
            url = mock.url("chat/completions")
            ...
            print(mock.stats())        # {"total": ..., "by_status": {"200": ...}}
    """

    def __init__(self, *extra_args: str) -> None:
        command = [sys.executable, "-m", "rate_limited_processor.mock_server", "--port", "0", *extra_args]
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        assert self._process.stdout is not None
        banner = self._process.stdout.readline()  # "Mock OpenAI API at http://127.0.0.1:PORT/v1  (stats: …)"
        match = re.search(r"(http://\S+)/v1\b", banner)
        if match is None:
            self.close()
            raise RuntimeError(f"the mock did not print its URL; it printed {banner!r}")
        self.origin = match.group(1)

    def url(self, endpoint: str) -> str:
        return f"{self.origin}/v1/{endpoint}"

    def cpu_seconds(self) -> float:
        """User + system CPU the mock has used so far (Linux: /proc/<pid>/stat), to tell whether it was the bottleneck."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.origin}/mock/stats", timeout=10) as response:
            return json.load(response)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.communicate()

    def __enter__(self) -> MockProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


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
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
