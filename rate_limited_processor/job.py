"""The file job: the JSONL reader feeding the dispatch loop, drained into the JSONL writer.

Rerunning the same job resumes it: lines whose final row is already in the results file are skipped
(see `resume.py`). What a crash can cost: the requests in flight at that moment, which are sent again
on the rerun. Rows are appended and flushed one at a time, so nothing already written is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

from .clock import LOOP_CLOCK, Clock
from .config import DEFAULT_ORDERED_WINDOW, DEFAULT_SHUTDOWN_GRACE, Settings
from .errors import RunStopped
from .limiter import RateLimiter
from .models import APIRequest, RejectedLine, RequestResult
from .request_io import OutputFormat, ResultWriter, count_lines, detect_output_format, read_requests
from .resume import DoneIndex, identity_of_item, prepare_results_file
from .runner import Processor
from .status import ProgressDisplay, RunStats
from .transport import SendFunction, Transport

__all__ = ["run_file_job", "skip_done", "default_save_path", "Reorder"]

logger = logging.getLogger("rate_limited_processor")

#: Seconds between redraws of the display when no result arrives (or the status interval, if shorter).
TICK_SECONDS = 1.0


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
    transport: Transport | SendFunction | None = None,
    clock: Clock = LOOP_CLOCK,
    retry_failed: bool = False,
    handle_signals: bool = False,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    output_format: OutputFormat | Literal["auto"] = "auto",
    ordered: bool = False,
    ordered_window: int = DEFAULT_ORDERED_WINDOW,
    status_interval: float | None = None,
) -> RunStats:
    """Process every line of `requests_path` that has no final row in `save_path` yet, appending one.

    Returns the run's stats; `stats.stop_reason` is set when the run stopped early. Raises
    `resume.ResumeError` (before sending anything) if the results file is damaged. With
    `handle_signals`, a first SIGINT/SIGTERM stops taking requests and gives those in flight
    `shutdown_grace` seconds; a second abandons them at once. `output_format` "auto" writes Batch
    output for Batch input and the cookbook's rows otherwise. `ordered` writes rows in input order,
    holding at most `ordered_window` finished results until the ones before them are done.
    `show_progress` (default: stderr is a terminal) draws a bar; without one, a status line is printed
    every `status_interval` seconds (None: never), and with one, only for an interval with trouble.
    """
    if output_format == "auto":
        output_format = detect_output_format(requests_path)
    done, report = prepare_results_file(save_path, retry_failed=retry_failed)
    if report.repaired_torn_line:
        logger.warning("%s: cut off a torn last line (the previous run died mid-write); that request will be sent again", save_path)
    if report.failures_removed:
        logger.warning("%s: removed %d failure rows so those requests are retried", save_path, report.failures_removed)
    processor = Processor(settings, limiter=limiter, transport=transport, clock=clock, max_ahead=ordered_window if ordered else None)
    stats = processor.stats
    stats.failed_earlier = report.failure_rows
    stats.earlier_rows = len(done)
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    if show_progress or status_interval:
        stats.total = count_lines(requests_path)
    display = ProgressDisplay(stats, enabled=show_progress, status_interval=status_interval, given=settings.limits)
    if stats.earlier_rows:
        display.note(f"resuming: {save_path} already holds {stats.earlier_rows:,} results; those requests are not sent again")
    remove_handlers = _handle_signals(processor, shutdown_grace) if handle_signals else _nothing
    every = min(TICK_SECONDS, status_interval) if status_interval else TICK_SECONDS
    ticker = asyncio.ensure_future(_tick(display, clock, every)) if display.active else None
    try:
        with ResultWriter(save_path, output_format) as writer:
            reorder = Reorder() if ordered else None

            def write(batch: Iterable[RequestResult]) -> bool:
                try:
                    for result in batch:
                        writer.write(result)
                except OSError as error:
                    processor.abort(f"cannot write to {save_path}: {error.strerror or error}; a rerun resumes")
                    return False
                return True

            with contextlib.suppress(RunStopped):
                async with processor.run(skip_done(read_requests(requests_path), done)) as results:
                    async for result in results:
                        if not write(reorder.add(result) if reorder is not None else (result,)):
                            break
                        stats.already_done = done.claimed
                        display.update()
            if reorder is not None:
                write(reorder.drain())  # after a stop: what finished beyond a gap, still in order
    finally:
        stats.already_done = done.claimed
        remove_handlers()
        if ticker is not None:
            ticker.cancel()
        display.close()
        await processor.limiter.aclose()
    if stats.stop_reason is None and done.unclaimed:
        stats.orphan_rows = done.unclaimed
        logger.warning(
            "%s: %d rows match no line of %s (was the input edited since the earlier run?)",
            save_path, done.unclaimed, requests_path,
        )
    return stats


def skip_done(items: Iterator[APIRequest | RejectedLine], done: DoneIndex) -> Iterator[APIRequest | RejectedLine]:
    """The input minus the lines that already have a final row (`done.claimed` counts them)."""
    if not done:
        yield from items
        return
    for item in items:
        if not done.claim(identity_of_item(item)):
            yield item


class Reorder:
    """Releases results in the order the run read them (their `position`), holding the ones that
    finished early. The runner's `max_ahead` bounds how many it holds."""

    __slots__ = ("_waiting", "_next")

    def __init__(self) -> None:
        self._waiting: dict[int, RequestResult] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, result: RequestResult) -> list[RequestResult]:
        """The results now ready to write, in order (often just this one)."""
        if result.position is None:
            raise ValueError("only results of a run, which carry their position, can be put back in order")
        self._waiting[result.position] = result
        ready = []
        while self._next in self._waiting:
            ready.append(self._waiting.pop(self._next))
            self._next += 1
        return ready

    def drain(self) -> list[RequestResult]:
        """Whatever is still held (a stopped run leaves gaps), in order."""
        ready = [self._waiting[position] for position in sorted(self._waiting)]
        self._waiting.clear()
        return ready


async def _tick(display: ProgressDisplay, clock: Clock, every: float) -> None:
    """Keep the display moving when no result arrives (an outage, a long pause): it says it waits."""
    while True:
        await clock.sleep(every)
        display.tick()


def _handle_signals(processor: Processor, grace: float) -> Callable[[], None]:
    """First signal: finish what is in flight (up to `grace` seconds). Second: stop at once."""
    loop = asyncio.get_running_loop()
    received: list[str] = []

    def on_signal(name: str) -> None:
        received.append(name)
        in_flight = processor.stats.in_flight
        again = "Ctrl-C" if name == "SIGINT" else name
        if len(received) == 1:
            if in_flight:
                logger.warning("%s: taking no more requests; finishing %d in flight (up to %gs); %s again to abandon them", name, in_flight, grace, again)
            else:
                logger.warning("%s: taking no more requests; nothing is in flight", name)
            processor.stop(f"interrupted by {name}")
            loop.call_later(grace, processor.abort)
        else:
            logger.warning("%s again: abandoning the %d in flight (a rerun sends them)", name, in_flight)
            processor.abort()

    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig.name)

    def remove() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return remove


def _nothing() -> None:
    return None
