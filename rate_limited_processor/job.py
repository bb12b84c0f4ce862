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
import errno
import fcntl
import logging
import os
import re
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Literal, cast

from .budget import Budget
from .clock import LOOP_CLOCK, Clock
from .config import DEFAULT_ORDERED_WINDOW, DEFAULT_SHUTDOWN_GRACE, Settings
from .errors import RunStopped, UsageError
from .lanes import LimiterFactory
from .limiter import RateLimiter
from .models import APIRequest, RejectedLine, RequestResult
from .report import RunReport
from .request_io import OutputFormat, ResultWriter, count_lines, detect_output_format, read_requests
from .resume import INDEX_KIND, DoneIndex, ResumeReport, identity_of_item, prepare_results_file, sidecar_path
from .runner import Processor
from .side_files import JOB_SIDECARS, check_apart, job_files, named
from .status import ProgressDisplay, RunStats
from .transport import SendFunction, Transport

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
        from .parquet_output import ParquetOutputLock, ParquetResultWriter, check_parquet_output, prepare_parquet_results

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


def check_output_path(requests_path: str | Path, save_path: str | Path, *, sidecars: Iterable[str] = JOB_SIDECARS) -> None:
    """Refuse, before anything is read or sent, an output the run must never write to: the input itself
    under any name (the same device and inode, so a hard link or a symlink counts), or anything but a
    regular file (a FIFO would block, a device cannot be read back to resume). Nor may a sidecar the run writes
    beside the results (`sidecars`: the lock, the index, ...) be the input or the results (`side_files`)."""
    _check_output_file(requests_path, save_path)
    check_apart(job_files(requests_path, save_path, sidecars=sidecars))


def _check_output_file(requests_path: str | Path, save_path: str | Path) -> None:
    save = Path(save_path)
    try:
        output = save.stat()
    except FileNotFoundError:
        return  # a new file (or a symlink to one): created by the writer
    except OSError as error:
        raise UsageError(f"cannot use {save} as the output: {error.strerror}") from None
    if stat.S_ISDIR(output.st_mode):
        raise UsageError(f"{save} is a directory; give the path of a results file (it is created if missing)")
    if not stat.S_ISREG(output.st_mode):
        raise UsageError(f"{save} is not a regular file; the output must be one (it is read back to resume)")
    try:
        given = Path(requests_path).stat()
    except OSError:
        return  # no input: reported where it is read
    if (output.st_dev, output.st_ino) == (given.st_dev, given.st_ino):
        raise UsageError(f"the output {save} is the same file as the input {requests_path} (a hard link or a symlink counts); results need a file of their own")


#: What the lock file holds: who holds the lock, for the message a second run prints.
_LOCK_LINE = "rate_limited_processor lock: pid {pid} on {host} since {since}\n"
_LOCK_LINE_RE = re.compile(r"rate_limited_processor lock: pid (\d+) on (\S+) since (\S+)\n?")


class OutputLock:
    """One run at a time per results file, for the whole run: a second run exits before sending anything.

    Two non-blocking `flock`s. One on the sidecar `<results>.lock`, which says who holds it ("pid 4242 on
    host build-7") and is removed at the end. One on the results file itself, so a second name for the same
    file (a hard link) is caught too. A lock file with anything else in it is not ours: refused, untouched.
    """

    __slots__ = ("path", "lock_path", "_sidecar", "_results", "_results_id")

    def __init__(self, save_path: str | Path) -> None:
        self.path = Path(save_path)
        self.lock_path = sidecar_path(save_path, "lock")
        self._sidecar: int | None = None
        self._results: int | None = None
        self._results_id: tuple[int, int] | None = None

    def __repr__(self) -> str:
        return f"OutputLock({str(self.lock_path)!r}, held={self._sidecar is not None})"

    def __enter__(self) -> OutputLock:
        self._sidecar = self._lock_sidecar()
        try:
            self.follow()
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def follow(self) -> None:
        """Lock the results file as its path names it now (again after a rewrite replaced it)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as error:
            raise UsageError(f"cannot write {self.path}: {error.strerror}") from None
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) == self._results_id:
            os.close(fd)
            return
        if not _try_lock(fd, self.path):
            os.close(fd)
            raise UsageError(
                f"{self.path} is being written by another run under another name (a hard link to it?); "
                "wait for that run to finish, or give this one another output file"
            )
        if self._results is not None:
            os.close(self._results)
        self._results, self._results_id = fd, (info.st_dev, info.st_ino)

    def release(self) -> None:
        if self._sidecar is not None:
            with contextlib.suppress(OSError):
                if _same_file(self._sidecar, self.lock_path):
                    os.unlink(self.lock_path)  # before unlocking: whoever locks next finds the path gone and makes a new one
            os.close(self._sidecar)
            self._sidecar = None
        if self._results is not None:
            os.close(self._results)
            self._results = self._results_id = None

    def _lock_sidecar(self) -> int:
        while True:
            try:
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as error:
                raise UsageError(f"cannot create the lock file {self.lock_path}: {error.strerror}") from None
            try:
                if not _try_lock(fd, self.lock_path):
                    raise UsageError(f"{self.path} is in use by another run ({_holder(fd)}); wait for it to finish, or stop it")
                if _same_file(fd, self.lock_path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # the holder removed it between our open and our lock: lock the one there now
        held_by = os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
        if held_by and _LOCK_LINE_RE.fullmatch(held_by) is None:
            os.close(fd)
            raise UsageError(f"{self.lock_path} exists and is not a lock file of this tool; it is left untouched (move it aside if it is not needed)")
        line = _LOCK_LINE.format(pid=os.getpid(), host=socket.gethostname() or "?", since=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, line.encode(), 0)
        except OSError as error:  # a full disk: said with the lock file's name, not as a bug
            os.close(fd)
            raise named(error, self.lock_path) from None
        return fd


def _try_lock(fd: int, path: Path) -> bool:
    """Take an exclusive flock without waiting: False when someone else holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
        logger.warning("%s: cannot be locked on this file system (%s); a second run on the same output would not be stopped", path, error.strerror)
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (named.st_dev, named.st_ino)


def _holder(fd: int) -> str:
    match = _LOCK_LINE_RE.fullmatch(os.pread(fd, 4096, 0).decode("utf-8", errors="replace"))
    if match is None:
        return "it is starting, or is not this tool"
    return f"pid {match[1]} on host {match[2]}, since {match[3]}"


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
