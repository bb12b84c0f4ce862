"""The job pipeline both modes run, online (`file_job.py`) and batch (`batch_job.py`): the steps they share.

A job goes: the output checked, locked and prepared (`opened_output`: never the input under another name, always
a regular file, a results file of this tool or empty; the torn last line cut, failure rows dropped with
`retry_failed`, the resume index read), the lines already answered skipped (`skip_done`), the lines that cannot
be sent given their failure row (`invalid_row`), the progress display (`progress_display`), and Ctrl-C, SIGTERM
and SIGHUP caught for the run (`stop_signals`). What differs between the modes is only how the other lines are
sent: the online runner, or the Batch API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..base.models import APIRequest, RejectedLine, RequestResult, ResultKind
from ..config.settings import Settings
from ..core.stats import RunStats
from ..files.output_file import OutputLock, check_output_path
from ..files.request_io import OutputFormat, count_lines, detect_output_format
from ..files.resume import INDEX_KIND, DoneIndex, ResumeReport, identity_of_item, prepare_results_file, sidecar_path
from ..files.side_files import JOB_SIDECARS, named
from ..ui.display import ProgressDisplay

__all__ = [
    "JobOutput", "opened_output", "default_save_path", "note_repairs", "skip_done", "invalid_row", "progress_display",
    "stop_signals", "on_stop_signals", "STOP_SIGNALS",
]

logger = logging.getLogger("rate_limited_processor")


def default_save_path(requests_path: str | Path) -> Path:
    """The cookbook's default: `<input stem>_results.jsonl` beside the input."""
    path = Path(requests_path)
    return path.with_name(f"{path.stem}_results.jsonl")


# -- setup: the output ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobOutput:
    """The results file (or Parquet directory) of a job, checked, locked and prepared: what a rerun skips."""

    format: OutputFormat | Literal["parquet"]
    done: DoneIndex
    report: ResumeReport

    def count_earlier(self, stats: RunStats) -> None:
        """What the output held before this run: the rows a rerun does not send again, and its failures."""
        stats.failed_earlier = self.report.failure_rows
        stats.earlier_rows = len(self.done)


@contextlib.contextmanager
def opened_output(
    requests_path: str | Path, save_path: str | Path, output_format: OutputFormat | Literal["auto", "parquet"], *,
    retry_failed: bool, sidecars: Iterable[str] = JOB_SIDECARS, tidy: bool = False,
) -> Iterator[JobOutput]:
    """The output, refused before anything is sent if it cannot be used, and held (`OutputLock`) while the job runs,
    so two runs never write, and pay for, the same file. "auto" becomes the format the input calls for. With `tidy`,
    a results file this run made and wrote no row in is removed again at the end."""
    parquet = output_format == "parquet"
    if parquet:
        from ..files.parquet import ParquetOutputLock, check_parquet_output, prepare_parquet_results

        check_parquet_output(save_path)
    else:
        check_output_path(requests_path, save_path, sidecars=sidecars)
    fresh = tidy and not parquet and not os.path.lexists(save_path)
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
        try:
            yield JobOutput(output_format, done, report)
        finally:
            if fresh:
                _remove_if_empty(save_path)


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


# -- the lines ---------------------------------------------------------------------------------------


def skip_done(items: Iterator[APIRequest | RejectedLine], done: DoneIndex) -> Iterator[APIRequest | RejectedLine]:
    """The input minus the lines that already have a final row (`done.claimed` counts them): the input itself
    when none has."""
    if not done:
        return items
    return (item for item in items if not done.claim(identity_of_item(item)))


def invalid_row(item: APIRequest | RejectedLine, reason: str | None = None) -> RequestResult:
    """The failure row of a line that is not sent: not a request (its reason), or a request refused for `reason`."""
    if isinstance(item, RejectedLine):
        metadata = {"custom_id": item.custom_id} if item.custom_id is not None else None
        return RequestResult(item.index, item.content, metadata, None, (item.reason,), 0, ResultKind.INVALID, custom_id=item.custom_id)
    return RequestResult(item.index, item.body, item.metadata, None, (reason or "not sent",), 0, ResultKind.INVALID, custom_id=item.custom_id)


# -- progress and signals ------------------------------------------------------------------------------


def progress_display(
    stats: RunStats, settings: Settings, requests_path: str | Path, show_progress: bool | None, status_interval: float | None,
    *, count: bool = False,
) -> ProgressDisplay:
    """The bar (`show_progress`, default: stderr is a terminal) or status lines every `status_interval` seconds.
    The input's lines are counted for either (or always, with `count`), so they can say how far the run is."""
    enabled = sys.stderr.isatty() if show_progress is None else show_progress
    if count or enabled or status_interval:
        stats.total = count_lines(requests_path)
    return ProgressDisplay(stats, enabled=enabled, status_interval=status_interval, given=settings.limits)


@contextlib.contextmanager
def stop_signals(enabled: bool, first: Callable[[str], None], again: Callable[[str], None]) -> Iterator[None]:
    """While the job runs (if `enabled`): `first(name)` on the first stop signal, `again(name)` on each after it."""
    if not enabled:
        yield
        return
    received = 0

    def on_signal(name: str) -> None:
        nonlocal received
        received += 1
        (first if received == 1 else again)(name)

    remove = on_stop_signals(on_signal)
    try:
        yield
    finally:
        remove()


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
