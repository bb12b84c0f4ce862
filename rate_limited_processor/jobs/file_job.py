"""The file job: the JSONL reader feeding the dispatch loop, drained into the JSONL writer.

Rerunning the same job resumes it: lines whose final row is already in the results file are skipped
(see `resume.py`; the resume index beside the results file says which, without reading every row). What
a crash can cost: the requests in flight at that moment, which are sent again on the rerun. Rows are
appended and flushed one at a time, so nothing already written is lost.

The output is checked before anything is sent (`check_output_path`: never the input under another name,
always a regular file; `resume.prepare_results_file`: a results file of this tool, or empty) and held for
the whole run (`OutputLock`), so two runs never write, and pay for, the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal, cast

from ..base.clock import LOOP_CLOCK, Clock
from ..base.errors import RunStopped
from ..base.models import APIRequest, RejectedLine, RequestResult
from ..config.settings import DEFAULT_ORDERED_WINDOW, DEFAULT_SHUTDOWN_GRACE, Settings
from ..core.budget import Budget
from ..core.limiter import RateLimiter
from ..core.stats import RunStats
from ..engine.lanes import LimiterFactory
from ..engine.processor import Processor
from ..files.output_file import OutputLock, check_output_path
from ..files.request_io import OutputFormat, ResultWriter, count_lines, detect_output_format, read_requests
from ..files.resume import INDEX_KIND, DoneIndex, ResumeReport, identity_of_item, prepare_results_file, sidecar_path
from ..files.side_files import named
from ..transport.http import SendFunction, Transport
from ..ui.display import ProgressDisplay
from ..ui.report import RunReport

#: `OutputLock` and `check_output_path` live in files.output_file, re-exported here where earlier releases had them.
__all__ = ["run_file_job", "skip_done", "default_save_path", "check_output_path", "note_repairs", "OutputLock", "Reorder"]

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
    limiter_factory: LimiterFactory | None = None,
    transport: Transport | SendFunction | None = None,
    clock: Clock = LOOP_CLOCK,
    retry_failed: bool = False,
    handle_signals: bool = False,
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
    output_format: OutputFormat | Literal["auto", "parquet"] = "auto",
    ordered: bool = False,
    ordered_window: int = DEFAULT_ORDERED_WINDOW,
    status_interval: float | None = None,
    benchmark: RunReport | None = None,
    budget: Budget | None = None,
    watch: Callable[[Processor], None] | None = None,
) -> RunStats:
    """Process every line of `requests_path` that has no final row in `save_path` yet, appending one.

    Returns the run's stats; `stats.stop_reason` is set when the run stopped early. Raises `UsageError`
    before sending anything if the output is the input (under any name) or not a regular file, or another
    run holds it (see `OutputLock`), and `resume.ResumeError` if it is not a results file or is damaged. With
    `handle_signals`, a first SIGINT/SIGTERM/SIGHUP stops taking requests and gives those in flight
    `shutdown_grace` seconds; a second abandons them at once. `output_format` "auto" writes Batch
    output for Batch input and the cookbook's rows otherwise; "parquet" a directory of Parquet files (`parquet_output.py`).
    `ordered` writes rows in input order, holding at most `ordered_window` finished results until the ones before them are done.
    `show_progress` (default: stderr is a terminal) draws a bar; without one, a status line is printed
    every `status_interval` seconds (None: never), and with one, only for an interval with trouble.
    `benchmark` is given every result written, for the benchmark report (`RunReport.build` after the run).
    `budget` (`--max_cost_usd`) stops the run, as a signal does, before a request that would not fit in it.
    `watch` is called with the run's `Processor` before it starts (`--metrics_port` reads it when scraped).
    """
    parquet = output_format == "parquet"
    if parquet:
        from ..files.parquet import ParquetOutputLock, ParquetResultWriter, check_parquet_output, prepare_parquet_results

        check_parquet_output(save_path)
    else:
        check_output_path(requests_path, save_path)
    fresh = not parquet and not os.path.lexists(save_path)  # made by this run: removed again if it ends with no row in it
    with (ParquetOutputLock if parquet else OutputLock)(save_path) as lock:
        if output_format == "auto":
            output_format = detect_output_format(requests_path)
        prepare = prepare_parquet_results if parquet else prepare_results_file
        try:
            done, report = prepare(save_path, retry_failed=retry_failed)
        except OSError as error:  # a full disk while indexing or repairing: one line naming the file, not a bug
            raise named(error, save_path) from None
        lock.follow()  # dropping failure rows replaced the file: the new one is locked too
        note_repairs(save_path, report)
        processor = Processor(
            settings, limiter=limiter, limiter_factory=limiter_factory, transport=transport, clock=clock,
            max_ahead=ordered_window if ordered else None, budget=budget,
        )
        if watch is not None:
            watch(processor)
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
            with ParquetResultWriter(save_path) if parquet else ResultWriter(save_path, cast(OutputFormat, output_format), index=True) as writer:
                reorder = Reorder() if ordered else None

                def write(batch: Iterable[RequestResult]) -> bool:
                    try:
                        for result in batch:
                            writer.write(result)
                    except OSError as error:
                        processor.abort(f"cannot write to {save_path}: {error.strerror or error}; a rerun resumes")
                        return False
                    return True

                def store(result: RequestResult) -> bool:
                    """Each result as it is final: its row written (or held for its turn), before the next one."""
                    if not write(reorder.add(result) if reorder is not None else (result,)):
                        return False
                    if writer.moved is not None and not stats.stop_reason:
                        stop_for_move(writer.moved)
                    if benchmark is not None:
                        if benchmark.origin is None:  # the timeline's second 0: when the run started
                            benchmark.begin(stats.started_at)
                        benchmark.add(result)
                    stats.already_done = done.claimed
                    display.update()
                    return True

                def stop_for_move(moved: str) -> None:
                    logger.error("%s; stopping the run (the answers in flight are written to the same file)", moved)
                    processor.stop(moved)

                with contextlib.suppress(RunStopped):
                    await processor.process_into(skip_done(read_requests(requests_path), done), store)
                if reorder is not None:
                    write(reorder.drain())  # after a stop: what finished beyond a gap, still in order
                moved = writer.moved or writer.check_moved()  # a run shorter than a check's interval is checked at its end
                if moved is not None and stats.stop_reason is None:
                    logger.error("%s", moved)
                    stats.stop_reason = moved
        finally:
            stats.already_done = done.claimed
            remove_handlers()
            if ticker is not None:
                ticker.cancel()
            display.close()
            if limiter is not None:
                await limiter.aclose()
            if fresh:
                _remove_if_empty(save_path)
        if stats.stop_reason is None and done.unclaimed:
            stats.orphan_rows = done.unclaimed
            logger.warning(
                "%s: %d rows match no line of %s (was the input edited since the earlier run?)",
                save_path, done.unclaimed, requests_path,
            )
        return stats


def _remove_if_empty(save_path: str | Path) -> None:
    """A run that made its results file and wrote no row in it (a wrong URL, a bad key, Ctrl-C at once) leaves
    nothing behind: not an empty file, nor a resume index of it."""
    index = sidecar_path(save_path, INDEX_KIND)
    with contextlib.suppress(OSError):
        if os.path.getsize(save_path) == 0:
            os.unlink(save_path)
            index.unlink(missing_ok=True)


def note_repairs(save_path: str | Path, report: ResumeReport) -> None:
    """Say what preparing the results file changed in it."""
    if report.repaired_torn_line:
        logger.warning("%s: cut off a torn last line (the previous run died mid-write); that request will be sent again", save_path)
    if report.failures_removed:
        logger.warning("%s: removed %d failure rows so those requests are retried", save_path, report.failures_removed)


def skip_done(items: Iterator[APIRequest | RejectedLine], done: DoneIndex) -> Iterator[APIRequest | RejectedLine]:
    """The input minus the lines that already have a final row (`done.claimed` counts them): the input itself
    when none has."""
    if not done:
        return items
    return (item for item in items if not done.claim(identity_of_item(item)))


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

    return on_stop_signals(on_signal)


#: The signals that stop a run as Ctrl-C does. SIGHUP is a closed terminal or ssh session: its default, dying at
#: once, would lose the answers in flight (paid for, then paid for again by the rerun) and the summary.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


def on_stop_signals(on_signal: Callable[[str], None]) -> Callable[[], None]:
    """Call `on_signal(name)` on SIGINT, SIGTERM and SIGHUP in the running loop; the function returned removes it."""
    loop = asyncio.get_running_loop()
    signals = STOP_SIGNALS
    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig.name)

    def remove() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return remove


def _nothing() -> None:
    return None
