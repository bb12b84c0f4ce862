"""The file job, online: the JSONL reader feeding the dispatch loop, drained into the JSONL writer. It is the online
mode of the job pipeline (`pipeline.py` holds the steps it shares with the batch mode, `batch_job.py`).

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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Literal

from ..base.clock import LOOP_CLOCK, Clock
from ..base.errors import RunStopped
from ..base.models import RequestResult
from ..config.settings import DEFAULT_ORDERED_WINDOW, DEFAULT_SHUTDOWN_GRACE, Settings
from ..core.budget import Budget
from ..core.daily_limit import DailyLimit, SharedDaySpend
from ..core.limiter import RateLimiter
from ..core.stats import RunStats
from ..engine.lanes import LimiterFactory
from ..engine.processor import Processor
from ..files.day_file import read_day_record, write_day_record
from ..files.output_file import OutputLock, check_output_path
from ..files.request_io import OutputFormat, ResultWriter, read_requests
from ..transport.http import SendFunction, Transport
from ..ui.display import ProgressDisplay
from ..ui.report import RunReport
from .pipeline import STOP_SIGNALS, JobOutput, default_save_path, note_repairs, on_stop_signals, opened_output, progress_display, skip_done, stop_signals

#: `OutputLock` and `check_output_path` live in files.output_file, and `default_save_path`, `skip_done`, `note_repairs`,
#: `on_stop_signals`, `STOP_SIGNALS` in jobs.pipeline (the steps both modes share); re-exported here where earlier releases had them.
__all__ = [
    "run_file_job", "skip_done", "default_save_path", "check_output_path", "note_repairs", "OutputLock", "Reorder", "on_stop_signals", "STOP_SIGNALS",
]

logger = logging.getLogger("rate_limited_processor")

#: Seconds between redraws of the display when no result arrives (or the status interval, if shorter).
TICK_SECONDS = 1.0


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
    shared_day: SharedDaySpend | None = None,
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
    `shared_day` (`--redis_url`) counts the per-day limits across processes; `<results>.day` is still written.
    """
    with opened_output(requests_path, save_path, output_format, retry_failed=retry_failed, tidy=True) as output:
        daily = _daily_limit(settings, save_path)
        processor = Processor(
            settings, limiter=limiter, limiter_factory=limiter_factory, transport=transport, clock=clock,
            max_ahead=ordered_window if ordered else None, budget=budget,
            daily=daily, save_day=(lambda record: write_day_record(save_path, record)) if daily is not None else None, shared_day=shared_day,
        )
        if watch is not None:
            watch(processor)
        stats = processor.stats
        output.count_earlier(stats)
        display = progress_display(stats, settings, requests_path, show_progress, status_interval)
        if stats.earlier_rows:
            display.note(f"resuming: {save_path} already holds {stats.earlier_rows:,} results; those requests are not sent again")
        try:
            with stop_signals(handle_signals, *_on_signals(processor, shutdown_grace)), _ticking(display, clock, status_interval):
                await _write_rows(processor, requests_path, save_path, output, display, Reorder() if ordered else None, benchmark)
        finally:
            stats.already_done = output.done.claimed
            display.close()
            if limiter is not None:
                await limiter.aclose()
            if daily is not None and daily.day:
                _keep_day(save_path, daily)
        if stats.stop_reason is None and output.done.unclaimed:
            stats.orphan_rows = output.done.unclaimed
            logger.warning(
                "%s: %d rows match no line of %s (was the input edited since the earlier run?)",
                save_path, output.done.unclaimed, requests_path,
            )
        return stats


def _daily_limit(settings: Settings, save_path: str | Path) -> DailyLimit | None:
    """The settings' per-day limits, with what earlier runs of this output spent (`<results>.day`); None without any."""
    if settings.max_requests_per_day is None and settings.max_tokens_per_day is None:
        return None
    daily = DailyLimit(settings.max_requests_per_day, settings.max_tokens_per_day)
    daily.restore(read_day_record(save_path))
    return daily


def _keep_day(save_path: str | Path, daily: DailyLimit) -> None:
    """The day's spend, as the run ends: saved during the run at most once a second, so the last second is saved here."""
    try:
        write_day_record(save_path, daily.record())
    except OSError as error:
        logger.warning("cannot write the day's spend beside %s: %s", save_path, error.strerror or error)


async def _write_rows(
    processor: Processor, requests_path: str | Path, save_path: str | Path, output: JobOutput, display: ProgressDisplay,
    reorder: Reorder | None, benchmark: RunReport | None,
) -> None:
    """The online mode proper: the lines without a row through the processor, each result's row written as it is final."""
    stats, done = processor.stats, output.done
    if output.format == "parquet":
        from ..files.parquet import ParquetResultWriter

        opened: ParquetResultWriter | ResultWriter = ParquetResultWriter(save_path)
    else:
        opened = ResultWriter(save_path, output.format, index=True)
    with opened as writer:

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
                logger.error("%s; stopping the run (the answers in flight are written to the same file)", writer.moved)
                processor.stop(writer.moved)
            if benchmark is not None:
                if benchmark.origin is None:  # the timeline's second 0: when the run started
                    benchmark.begin(stats.started_at)
                benchmark.add(result)
            stats.already_done = done.claimed
            display.update()
            return True

        with contextlib.suppress(RunStopped):
            await processor.process_into(skip_done(read_requests(requests_path), done), store)
        if reorder is not None:
            write(reorder.drain())  # after a stop: what finished beyond a gap, still in order
        moved = writer.moved or writer.check_moved()  # a run shorter than a check's interval is checked at its end
        if moved is not None and stats.stop_reason is None:
            logger.error("%s", moved)
            stats.stop_reason = moved


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


@contextlib.contextmanager
def _ticking(display: ProgressDisplay, clock: Clock, status_interval: float | None) -> Iterator[None]:
    """Keep the display moving when no result arrives (an outage, a long pause): it says it waits."""
    every = min(TICK_SECONDS, status_interval) if status_interval else TICK_SECONDS
    ticker = asyncio.ensure_future(_tick(display, clock, every)) if display.active else None
    try:
        yield
    finally:
        if ticker is not None:
            ticker.cancel()


async def _tick(display: ProgressDisplay, clock: Clock, every: float) -> None:
    while True:
        await clock.sleep(every)
        display.tick()


def _on_signals(processor: Processor, grace: float) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """First signal: finish what is in flight (up to `grace` seconds). Second: stop at once."""
    loop = asyncio.get_running_loop()

    def first(name: str) -> None:
        in_flight = processor.stats.in_flight
        again = "Ctrl-C" if name == "SIGINT" else name
        if in_flight:
            logger.warning("%s: taking no more requests; finishing %d in flight (up to %gs); %s again to abandon them", name, in_flight, grace, again)
        else:
            logger.warning("%s: taking no more requests; nothing is in flight", name)
        processor.stop(f"interrupted by {name}")
        loop.call_later(grace, processor.abort)

    def again(name: str) -> None:
        logger.warning("%s again: abandoning the %d in flight (a rerun sends them)", name, processor.stats.in_flight)
        processor.abort()

    return first, again
