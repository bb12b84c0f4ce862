"""What every job of batches (batch mode's, auto mode's) shares: where a URL's batches go (`BatchWhere`), and the
steps of its run (`run_batches`): the output checked and locked, the batch record loaded, the job built before
anything is sent, every line without a row planned, the job run, the stats returned."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, cast

from ..base.clock import Clock
from ..config.credentials import auth_headers, scrubber_for
from ..config.settings import Settings
from ..core.stats import RunStats
from ..files.request_io import OutputFormat, ResultWriter, read_requests
from ..files.resume import sidecar_path
from ..providers.provider import BatchPlace
from ..providers.registry import provider_for
from ..ui.display import ProgressDisplay
from .batch_api import AiohttpBatchHTTP, BatchAPI, BatchHTTP, api_root
from .batch_rows import BatchLines
from .batch_state import BatchState
from .message_batches import MessageBatchesAPI, messages_root
from .pipeline import opened_output, progress_display, skip_done, stop_signals

__all__ = ["SIDECAR_KIND", "BatchWhere", "BatchRunParts", "BatchesJob", "run_batches", "api_root"]

logger = logging.getLogger("rate_limited_processor")

#: The batch record's name beside the results: `<results>.batches`.
SIDECAR_KIND = "batches"


class BatchesJob(Protocol):
    """What `run_batches` asks of a job: its lines (planned one by one), its run, and its answers to Ctrl-C."""

    @property
    def lines(self) -> BatchLines: ...

    async def run(self) -> None: ...

    def stop(self, name: str) -> None: ...

    def stop_again(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchWhere:
    """Where a request URL's batches go, as its provider says: a Message Batches API (`message_batches`), or a Files
    and Batches API at `root` (`place`: kept elsewhere than OpenAI keeps it, as Azure's is). Shared by batch and auto mode."""

    root: str
    message_batches: bool
    place: BatchPlace | None

    @classmethod
    def of(cls, request_url: str) -> BatchWhere:
        provider = provider_for(request_url)
        place = provider.batch_place(request_url) if provider.batch_place is not None else None
        if provider.message_batches:
            return cls(messages_root(request_url), True, None)
        return cls(place.root if place is not None else api_root(request_url), False, place)

    def api(self, settings: Settings, http: BatchHTTP, clock: Clock) -> BatchAPI:
        """The client of this place's batch calls, with the run's auth headers."""
        return (MessageBatchesAPI if self.message_batches else BatchAPI)(
            self.root, auth_headers(settings), http=http, scrub=scrubber_for(settings), clock=clock,
            query=self.place.query if self.place is not None else "",
        )


@dataclass(frozen=True, slots=True)
class BatchRunParts:
    """What a job of batches (batch mode's, auto mode's) is built from: made alike for both by `run_batches`."""

    where: BatchWhere
    state: BatchState
    api: BatchAPI
    writer: ResultWriter
    stats: RunStats
    display: ProgressDisplay


async def run_batches(
    settings: Settings,
    requests_path: str | Path,
    save_path: str | Path,
    sidecars: tuple[str, ...],
    build: Callable[[BatchRunParts], BatchesJob],
    *,
    http: BatchHTTP | None,
    clock: Clock,
    output_format: OutputFormat | Literal["auto"],
    retry_failed: bool,
    handle_signals: bool,
    show_progress: bool | None,
    status_interval: float | None,
    finish: Callable[[BatchesJob], None] | None = None,
) -> RunStats:
    """The steps every job of batches takes: the output checked and locked, the batch record loaded, the job `build`
    made (before anything is sent), every line without a row planned, the job run, and `finish` called on it once
    its rows are written; the stats returned."""
    requests_path, save_path = Path(requests_path), Path(save_path)
    with opened_output(requests_path, save_path, output_format, retry_failed=retry_failed, sidecars=sidecars) as output:
        where = BatchWhere.of(settings.request_url)
        state = BatchState.load(sidecar_path(save_path, SIDECAR_KIND), where.root)
        network = http if http is not None else AiohttpBatchHTTP()
        stats = RunStats(settings.limits, started_at=clock.now(), clock=clock.now, batch=True)
        output.count_earlier(stats)
        display = progress_display(stats, settings, requests_path, show_progress, status_interval, count=True)
        try:
            with ResultWriter(save_path, cast(OutputFormat, output.format), index=True) as writer:
                job = build(BatchRunParts(where, state, where.api(settings, network, clock), writer, stats, display))
                with stop_signals(handle_signals, job.stop, job.stop_again):
                    for item in skip_done(read_requests(requests_path), output.done):
                        job.lines.plan(item)
                    stats.already_done = output.done.claimed
                    await job.run()
                    moved = writer.check_moved()
                    if moved is not None:
                        logger.error("%s", moved)
                        stats.stop_reason = stats.stop_reason or moved
                if finish is not None:
                    finish(job)
        finally:
            stats.already_done = output.done.claimed
            stats.finished_at = clock.now()
            display.close()
            if isinstance(network, AiohttpBatchHTTP) and http is None:
                await network.aclose()
        return stats
