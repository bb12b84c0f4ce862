"""`--mode batch`: the requests file through the Batch API (half price, results within 24 hours), not the online runner.

How it goes. The input is read once: a line with a row already is skipped (as online), a line that cannot be sent
gets its failure row at once, and the rest are planned into parts of at most `max_lines` lines and `max_bytes`
bytes, one endpoint and one model each (a batch takes one of each). Every part is recorded beside the results
(`<results>.batches`, see `batch_state.py`) before anything is uploaded. Then each part in turn is uploaded as a
Batch input file (purpose "batch") and a batch is created for it (completion window 24h); the batches are asked
after every `poll_interval` seconds, and when one ends its output and error files are downloaded and each line
gets its row, in the usual shape, through the same writer as online. A rerun resumes: the rows already written
are skipped, the recorded batches are collected, and a part a killed run uploaded or created without recording
it is found again by its token, so no line is uploaded twice.

Limits. A batch refused for the enqueued-token limit (`token_limit_exceeded`) waits until an earlier one ends,
then is created again from the same file; the next parts wait with it. With a budget (`--max_cost_usd`), a part
is sent only when its estimated cost (at batch prices) fits beside what the ended parts cost and the estimates
of those running. Lines a batch failed or let expire end as failure rows, or with `fallback="online"` are sent
online once the batches are done. Ctrl-C leaves the batches running and says how to collect or cancel them.

With a Messages URL the batch API is a Message Batches API (`message_batches.py`): `_MessageBatchJob` replaces
the steps that differ (`_send`: the requests go in the create call; `_poll`, `_fetch`: ended, then the results
URL; `_owns`: a batch found by listing is the part's only if its results say so), and the rest is shared.

This module is the batch mode of the job pipeline (`pipeline.py` holds the steps it shares with the online mode): the
run and its batches. The lines, their parts and their rows are in `batch_rows.py`.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path
from typing import IO, Any, Literal

from ..base.clock import LOOP_CLOCK, Clock
from ..config.credentials import scrubber_for
from ..config.settings import Settings
from ..core.budget import Budget
from ..core.costs import PriceBook
from ..core.stats import RunStats
from ..files.request_io import OutputFormat
from ..files.side_files import JOB_SIDECARS
from ..transport.http import SendFunction, Transport
from ..ui.display import ProgressDisplay
from .batch_api import BatchAPI, BatchAPIError, BatchHTTP, checked_id
from .batch_rows import BatchLines, BatchOptions, Fallback, index_answers, say_what_runs
from .batch_run import SIDECAR_KIND, BatchRunParts, BatchWhere, api_root, run_batches
from .batch_state import PART_METADATA_KEY, Part
from .message_batches import MessageBatchesAPI, MessageBatchLines, owns_answers

__all__ = ["BatchOptions", "Fallback", "run_batch_job", "api_root", "SIDECAR_KIND", "SIDECARS", "BatchWhere"]

logger = logging.getLogger("rate_limited_processor")

#: The files kept beside the results by a batch mode run: an online run's, and the batch record.
SIDECARS = (*JOB_SIDECARS, SIDECAR_KIND)

async def run_batch_job(
    settings: Settings,
    requests_path: str | Path,
    save_path: str | Path,
    *,
    options: BatchOptions = BatchOptions(),  # noqa: B008 (frozen: one default for every call)
    prices: PriceBook | None = None,
    budget: Budget | None = None,
    http: BatchHTTP | None = None,
    transport: Transport | SendFunction | None = None,
    clock: Clock = LOOP_CLOCK,
    output_format: OutputFormat | Literal["auto"] = "auto",
    retry_failed: bool = False,
    handle_signals: bool = False,
    show_progress: bool | None = None,
    status_interval: float | None = None,
) -> RunStats:
    """Send every line of `requests_path` without a row in `save_path` through the Batch API, writing one row each.

    The API root is `settings.request_url` without its endpoint ("https://api.openai.com/v1"). `http` replaces
    the network for the Files and Batches calls (aiohttp by default), `transport` that of the online fallback.
    Returns the run's stats; `stop_reason` is set when it stopped before every line had its row (Ctrl-C, the
    budget, a refusal), and a rerun goes on. Raises what `run_file_job` raises for an output that cannot be used,
    and `ResumeError` for a batch record that is not this tool's or names another API root.
    """
    prices = budget.prices if budget is not None else prices

    def build(parts: BatchRunParts) -> _BatchJob:
        lines = (MessageBatchLines if parts.where.message_batches else BatchLines)(
            settings, Path(requests_path), parts.writer, parts.state, options, prices, clock, parts.stats, parts.display, parts.where.place,
        )
        return (_MessageBatchJob if parts.where.message_batches else _BatchJob)(lines, parts.api, budget, transport)

    return await run_batches(
        settings, requests_path, save_path, SIDECARS, build, http=http, clock=clock, output_format=output_format,
        retry_failed=retry_failed, handle_signals=handle_signals, show_progress=show_progress, status_interval=status_interval,
    )


class _BatchJob:
    """One batch-mode run's batches: send the parts, ask after them, collect them (`BatchLines` writes the rows)."""

    def __init__(self, lines: BatchLines, api: BatchAPI, budget: Budget | None, transport: Transport | SendFunction | None) -> None:
        self.lines = lines
        self.state = lines.state
        self.stats = lines.stats
        self.display: ProgressDisplay = lines.display
        self.clock = lines.clock
        self.options = lines.options
        self.api = api
        self.budget = budget
        self.transport = transport
        self._scrub = scrubber_for(lines.settings)
        #: The parts on record before this run sent anything about them (of an earlier run, or tried already), by number.
        self.recorded = {part.number for part in self.state.parts}
        #: Parts whose batch runs now, and parts refused for the enqueued-token limit, waiting for room.
        self.running: list[Part] = []
        self.waiting: list[Part] = []
        #: Parts tried again for room while none of this run's batches ran: refused again, they stop the run.
        self._tried_alone: set[int] = set()
        #: Parts to send again at once (a Message Batch found for a part proved another's).
        self.requeued: list[Part] = []
        #: Parts' dollars held in the budget while they run.
        self._reserved: dict[int, float] = {}
        self.stop_reason: str | None = None
        self._task: asyncio.Task[Any] | None = None

    # -- the run --------------------------------------------------------------------------------------

    async def run(self) -> None:
        self.lines.close_groups()
        self.state.save()  # every part is on record before anything about it is sent
        self._task = asyncio.current_task()
        queue: list[Part] = []
        for part in self.state.parts:
            part.done = not self.lines.pending[part.number]
            if part.done:
                continue
            if part.batch_id is not None:  # running, or ended with lines still without a row: asked after, collected again
                self.running.append(part)
            elif part.online:
                # Sent online by a run that was stopped: the rest go online too. Batched now, the lines answered
                # online would be paid for twice.
                self.lines.fallback.update(self.lines.pending[part.number])
                self.lines.pending[part.number].clear()
            else:
                queue.append(part)
        try:
            await self._loop(queue)
            if self.stop_reason is None and self.lines.fallback:
                self.stop_reason = await self.lines.send_online(self.transport)
        except asyncio.CancelledError:
            if self.stop_reason is None:
                raise
            if self._task is not None:
                self._task.uncancel()
        except BatchAPIError as error:
            self.stop_reason = f"{error}; a rerun resumes"
            logger.error("%s", self.stop_reason)
        self._end()

    def _end(self) -> None:
        """The run's stop reason, what is left running at the API, and the record: removed once every line has its row."""
        self.stats.unfinished = self.lines.unfinished
        if self.stop_reason is None and self.stats.unfinished:  # never "all is well" while a line lacks its row
            self.stop_reason = f"{self.stats.unfinished:,} lines have no row yet; a rerun collects or sends them"
            logger.error("%s", self.stop_reason)
        if self.stop_reason is not None:
            self.stats.stop_reason = self.stop_reason
            say_what_runs(self.state, self.api.root, self.budget, self.api.query)
        self.state.save()
        if self.stop_reason is None and not self.stats.unfinished:
            self.state.remove()

    async def _loop(self, queue: list[Part]) -> None:
        while True:
            while queue and not self.waiting and self.stop_reason is None:
                if not self._fits(queue[0]):
                    break
                await self._submit(queue.pop(0))
            if self.stop_reason is not None:
                return
            if not self.running:
                if not queue and not self.waiting:
                    return
                again = [part for part in self.waiting if part.number not in self._tried_alone]
                if again:  # refused while others ran (perhaps in an earlier run): one more try with nothing else enqueued
                    self._tried_alone.update(part.number for part in again)
                    queue[:0] = again
                    self.waiting.clear()
                    continue
                self.stop_reason = self._stuck_reason(self.waiting[0] if self.waiting else queue[0])
                logger.warning("%s", self.stop_reason)
                return
            await self.clock.sleep(self.options.poll_interval)
            ended = await self._poll()
            queue[:0] = self.requeued
            self.requeued.clear()
            self.display.tick()  # the bar moves, and a status line is printed when one is due
            if ended and self.waiting:
                queue[:0] = self.waiting  # room may have freed: they go first, from their uploaded files
                self.waiting.clear()

    def _stuck_reason(self, part: Part) -> str:
        if self.waiting:
            return (
                f"the batch for {part.describe()} is refused for the enqueued-token limit with none of this run's batches running; "
                "use a smaller --batch_max_lines, or rerun once other batches on the account have ended"
            )
        assert self.budget is not None
        return self.budget.stop_reason(self._part_cost(part) or 0.0)

    def _fits(self, part: Part) -> bool:
        """With a budget: whether this part's estimated cost fits now (else it waits for running ones to end)."""
        if self.budget is None:
            return True
        cost = self._part_cost(part)
        if cost is None:
            self.stop_reason = self.budget.no_price_reason({"model": part.model} if part.model else {})
            return False
        return self.budget.fits(cost)

    def _part_cost(self, part: Part) -> float | None:
        prices = self.lines.prices
        price = prices.price(part.model) if prices is not None else None
        return None if price is None else price.dollars(part.input_tokens, part.output_tokens)

    async def _submit(self, part: Part) -> None:
        """Send the part (`_send`), record its batch, and watch it."""
        batch = await self._send(part)
        part.batch_ids.append(_id_of(batch, "batch"))
        self.state.save()
        self.recorded.add(part.number)  # on record now: a later try of it looks for what this one made
        if self.budget is not None:
            cost = self._part_cost(part) or 0.0
            self.budget.reserve(cost)
            self._reserved[part.number] = cost
        self.stats.attempts += len(self.lines.pending[part.number])
        self.running.append(part)
        self.display.note(f"{part.describe()}: batch {part.batch_id} created" + (f" from file {part.file_id}" if part.file_id is not None else ""))

    async def _send(self, part: Part) -> dict[str, Any]:
        """Upload the part's input file (unless it is on record or was uploaded unrecorded), then create its batch
        (or find the one a killed run created unrecorded)."""
        if part.file_id is None:
            found = await self.api.find_file(part.filename) if part.number in self.recorded else None
            if found is None:
                found = await self.api.upload(part.filename, self.lines.content(part))
            part.file_id = _id_of(found, "file")
            self.state.save()
        metadata = {PART_METADATA_KEY: part.token}
        return await self._unrecorded(part) or await self.api.create(part.file_id, self.lines.batch_endpoint(part), metadata, earlier=part.batch_ids)

    async def _unrecorded(self, part: Part) -> dict[str, Any] | None:
        """The batch a killed run made for a part on record before this run sent it, unrecorded (`made_unheard`)."""
        return await self.api.made_unheard(part, self.state.batch_ids()) if part.number in self.recorded else None

    async def _poll(self) -> bool:
        """Ask after every running batch; collect the ones that ended. True when one ended (room may have freed)."""
        ended = False
        for part in list(self.running):
            assert part.batch_id is not None
            try:
                batch = await self.api.get(part.batch_id)
            except BatchAPIError as error:
                if error.status != 404:
                    raise
                # The API no longer knows it (deleted, another project's key): asking again would block every rerun.
                self.running.remove(part)
                ended = True
                self._fail_part(part, (
                    f"batch {part.batch_id} is not known to the API (HTTP 404: deleted, or created with another key, project or workspace), so "
                    "its answers cannot be had; rerun with --retry_failed to send these lines again"
                ))
                continue
            ended |= await self._look(part, batch)
        return ended

    async def _look(self, part: Part, batch: dict[str, Any]) -> bool:
        """What the batch's state means for its part: still running, refused for room, ended (collected) or
        failed. True when it ended or failed (room may have freed)."""
        if self.api.running(batch):
            return False
        if self.api.refused_for_room(batch):
            self.running.remove(part)
            self.display.note(f"{part.describe()}: batch {part.batch_id} refused for the enqueued-token limit; it waits for an earlier batch to end")
            self._release(part, 0.0)
            self.waiting.append(part)
            return False
        if self.api.ended(batch):
            await self._collect(part, batch)  # a download that fails leaves the part running: asked after again
        else:
            self._fail_part(part, f"batch {part.batch_id} {self.api.status(batch)}: {self.api.failure(batch)}")
        self.running.remove(part)
        return True

    async def _collect(self, part: Part, batch: dict[str, Any]) -> None:
        """Download what the batch answered and write a row for each of the part's lines without one."""
        with tempfile.TemporaryFile(dir=self.lines.writer.path.parent) as output:
            answers: dict[str, int] = {}
            await self._fetch(batch, output, answers)
            if not self._owns(part, batch, answers):
                return
            spent, outcomes = self.lines.collect(part, batch, output, answers)
        self._release(part, spent)
        part.done = not self.lines.pending[part.number]
        self.state.save()
        counts = ", ".join(f"{count:,} {outcome}" for outcome, count in outcomes.items()) or "no rows to write"
        self.display.note(f"{part.describe()}: batch {part.batch_id} {self.api.status(batch)}: {counts}")

    async def _fetch(self, batch: dict[str, Any], output: IO[bytes], answers: dict[str, int]) -> None:
        """Download what an ended batch answered into `output`, indexing each answer by its custom_id."""
        for file_id in self.api.result_files(batch):
            start = output.seek(0, 2)
            await self.api.download(file_id, output)
            index_answers(output, start, answers)

    def _owns(self, part: Part, batch: dict[str, Any], answers: dict[str, int]) -> bool:
        """Whether the batch's answers are the part's (a batch found by its metadata always is)."""
        return True

    def _fail_part(self, part: Part, reason: str) -> None:
        """The whole batch failed (not for room): its lines end as failures, or go online with the fallback."""
        reason = self._scrub(reason)
        logger.error("%s: %s", part.describe(), reason)
        self.lines.fail(part, reason)
        self._release(part, 0.0)
        part.done = True
        self.state.save()

    def _release(self, part: Part, spent: float) -> None:
        if self.budget is not None:
            self.budget.settle(self._reserved.pop(part.number, 0.0), spent)

    # -- stopping -------------------------------------------------------------------------------------

    def stop(self, name: str) -> None:
        """Ctrl-C or SIGTERM: stop sending and asking; the batches created keep running at the API."""
        if self.stop_reason is None:
            self.stop_reason = f"interrupted by {name}"
            logger.warning("%s: stopping; the batches created keep running at the API", name)
        self.stop_again(name)

    def stop_again(self, name: str) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


class _MessageBatchJob(_BatchJob):
    """A Message Batches API's run (`message_batches.py`): a part's requests go in its create call, its batch is
    asked after until it has ended, and its results are read from its results URL."""

    api: MessageBatchesAPI

    async def _send(self, part: Part) -> dict[str, Any]:
        """Create the part's batch, recording first when its create began; or find the one a killed run created."""
        found = await self._unrecorded(part)
        if found is not None:
            self.display.note(f"{part.describe()}: batch {found.get('id')} seems the one a stopped run created for it; its results will tell")
            return found
        part.create_started_at = self.clock.wall()
        self.state.save()  # before the create: a rerun knows to look for a batch it may have made
        return await self.api.create_batch(part, self.lines.content(part), self.state.batch_ids())

    async def _look(self, part: Part, batch: dict[str, Any]) -> bool:
        if not self.api.ended(batch):
            return False
        await self._collect(part, batch)  # a download that fails leaves the part running: asked after again
        self.running.remove(part)
        return True

    async def _fetch(self, batch: dict[str, Any], output: IO[bytes], answers: dict[str, int]) -> None:
        await self.api.results(batch, output)
        index_answers(output, 0, answers)

    def _owns(self, part: Part, batch: dict[str, Any], answers: dict[str, int]) -> bool:
        """A batch found by listing is the part's only if its results carry the part's custom_ids; else it is set
        aside (never cancelled: it is someone else's) and the part is sent again."""
        if not answers or owns_answers(part, answers):
            return True
        batch_id = part.batch_ids.pop()
        part.passed_over.append(batch_id)
        self._release(part, 0.0)
        self.state.save()
        self.display.note(f"{part.describe()}: batch {batch_id} proved another's (none of its results is this part's); the part is sent again")
        self.requeued.append(part)
        return False


def _id_of(value: dict[str, Any], what: str) -> str:
    """The id of a file or batch the API made (or found): a plain id (`SAFE_ID`), as it goes into URLs and commands."""
    return checked_id(value.get("id"), f"the id in the API's answer for a new {what}")
