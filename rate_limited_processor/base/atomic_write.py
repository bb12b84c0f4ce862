"""Replacing a small file in one step, for what a reader must never see half of: the summary, the benchmark
report, the batch record, the price cache."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["write_json_atomically", "write_text_atomically"]


def write_json_atomically(path: Path, record: dict[str, Any]) -> None:
    """Replace `path` with `record` as JSON in one step: a reader sees the old file or the new, never half of one."""
    write_text_atomically(path, json.dumps(record, indent=2) + "\n")


def write_text_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one step."""
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as file:
        try:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        except BaseException:
            os.unlink(file.name)
            raise
    os.replace(file.name, path)
