"""`<results>.day`: what the runs of one output have spent today, against `--max_requests_per_day` and
`--max_tokens_per_day` (`core.daily_limit`), so a rerun the same day goes on counting where the last one stopped.

A small JSON object, `{"day": "YYYY-MM-DD", "requests": N, "tokens": N}`, replaced in one step
(`atomic_write`): a run killed while writing it leaves the old count or the new, never half of one. A file that
cannot be read as one counts as nothing spent, with a warning (it only ever holds a count).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..base.atomic_write import write_json_atomically
from .resume_index import sidecar_path

__all__ = ["DAY_KIND", "read_day_record", "write_day_record"]

logger = logging.getLogger("rate_limited_processor")

#: The sidecar's kind: `<results>.day`.
DAY_KIND = "day"


def read_day_record(results_path: str | Path) -> dict[str, Any] | None:
    """The spend an earlier run of `results_path` recorded, or None if there is none (or it cannot be read)."""
    path = sidecar_path(results_path, DAY_KIND)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning("%s: cannot read the day's spend (%s); counting from nothing", path, error)
        return None
    return record if isinstance(record, dict) else None


def write_day_record(results_path: str | Path, record: dict[str, Any]) -> None:
    """Replace `<results>.day` with `record` in one step."""
    write_json_atomically(sidecar_path(results_path, DAY_KIND), record)
