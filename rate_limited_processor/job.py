"""The file job: the JSONL reader feeding the dispatch loop, drained into the JSONL writer."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from .config import Settings
from .dispatcher import Processor, RunStopped
from .limiter import RateLimiter
from .request_io import ResultWriter, count_lines, read_requests
from .status import ProgressDisplay, RunStats

__all__ = ["run_file_job", "default_save_path"]


def default_save_path(requests_path: str | Path) -> Path:
    """The cookbook's default: `<input stem>_results.jsonl` beside the input."""
    path = Path(requests_path)
    return path.with_name(f"{path.stem}_results.jsonl")


async def run_file_job(
    settings: Settings,
    requests_path: str | Path,
    save_path: str | Path,
    *,
    show_progress: bool | None = None,
    limiter: RateLimiter | None = None,
) -> RunStats:
    """Process every line of `requests_path`, appending one result line per request to `save_path`.

    Returns the run's stats; `stats.stop_reason` is set when the run stopped early. The progress bar
    shows when stderr is a terminal, unless `show_progress` says otherwise.
    """
    processor = Processor(settings, limiter=limiter)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    if show_progress:
        processor.stats.total = count_lines(requests_path)
    display = ProgressDisplay(processor.stats, enabled=show_progress)
    try:
        with ResultWriter(save_path) as writer:
            with contextlib.suppress(RunStopped):
                async for result in processor.process(read_requests(requests_path)):
                    writer.write(result)
                    display.update()
    finally:
        display.close()
        await processor.limiter.aclose()
    return processor.stats
