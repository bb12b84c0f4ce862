"""`--mode auto --deadline`: every line done by the deadline, at the least cost: through batches, with online as the rescue.

How it goes. The lines are planned into parts as `--mode batch` plans them (`batch_rows.py`, `batch_state.py`), and
the plan (`core/deadline_plan.py`) says whether a batch can be tried at all. The parts' batches are created and
asked after as batch mode does (`batch_job.py`'s `_BatchJob`, or `_MessageBatchJob` for a Message Batches API,
whose loop this job's replaces; `BatchWhere` says which, and where, as in batch mode); at every poll the plan is
asked whether the lines still without a row could only just be finished online at the limits, with a margin.
From that moment (the rescue) every running batch is cancelled and the parts not yet created are not; the lines in
no running batch go online at once, and each cancelled batch, once it has ended, is collected (its output holds
what it finished, and those lines keep their answers) and its other lines join them, through one online runner,
so that the last row is written before the deadline.

Exactly once. A line is sent online only once its batch has ended and been collected without an answer for it, or
when its part was never created (a part a killed run may have created unrecorded is looked for by its token first,
and cancelled; a Message Batch, which carries no token, is looked for by its size and time and waited for
uncancelled, since it may be another's). The deadline is recorded beside the results (`<results>.deadline`, epoch seconds) with the batch
record, so a rerun after kill -9 continues the same plan: it collects the recorded batches, sends online only the
lines that have no row, and pays for no line twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterable, AsyncIterator, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from ..base import strict_json
from ..base.atomic_write import write_json_atomically
from ..base.clock import LOOP_CLOCK, Clock
from ..base.errors import ResumeError
from ..base.models import APIRequest, RejectedLine, RequestResult
from ..config.settings import Settings
from ..core.costs import CostLedger, PriceBook, usage_tokens
from ..core.deadline_plan import (
    Decision,
    Estimate,
    OnlineCapacity,
    Outcome,
    Route,
    Work,
    cancel_seconds,
    decide,
    estimate,
    format_estimate,
    rescue_at,
)
from ..core.stats import RunStats
from ..files.request_io import OutputFormat
from ..files.resume import sidecar_path
from ..files.side_files import JOB_SIDECARS
from ..transport.http import SendFunction, Transport
from .batch_api import BatchAPI, BatchAPIError, BatchHTTP
from .batch_job import _BatchJob, _MessageBatchJob
from .batch_rows import BatchLines, BatchOptions
from .batch_run import SIDECAR_KIND as BATCH_SIDECAR
from .batch_run import BatchesJob, BatchRunParts, run_batches
from .batch_state import Part
from .message_batches import MessageBatchesAPI, MessageBatchLines

__all__ = ["run_auto_job", "DEADLINE_SIDECAR", "SIDECARS", "AutoPrices"]

logger = logging.getLogger("rate_limited_processor")

#: The sidecar that holds the plan's deadline (epoch seconds) while its batches are on record: `<results>.deadline`.
DEADLINE_SIDECAR = "deadline"
#: The files kept beside the results by an auto mode run: an online run's, the batch record, and the deadline.
SIDECARS = (*JOB_SIDECARS, BATCH_SIDECAR, DEADLINE_SIDECAR)
#: Seconds between asks after batches being cancelled: the rescue waits on them.
CANCEL_POLL_INTERVAL = 0.5
#: Seconds past the deadline (or the rescue, if later) that cancelled batches are waited for before the run stops
#: and leaves them to a rerun: OpenAI says a cancel can take up to 10 minutes.
CANCEL_PATIENCE = 600.0
#: The least sleep between asks: the rescue time, recomputed, creeps later as the deadline nears.
MIN_SLEEP = 0.2


@dataclass(frozen=True, slots=True)
class AutoPrices:
    """The run's prices both ways: at batch prices and online (None where no price is known)."""

    batch: PriceBook | None = None
    online: PriceBook | None = None


async def run_auto_job(
    settings: Settings,
    requests_path: str | Path,
    save_path: str | Path,
    *,
    deadline_seconds: float,
    options: BatchOptions = BatchOptions(),  # noqa: B008 (frozen: one default for every call)
    prices: AutoPrices = AutoPrices(),  # noqa: B008
    capacity: OnlineCapacity | None = None,
    http: BatchHTTP | None = None,
    transport: Transport | SendFunction | None = None,
    clock: Clock = LOOP_CLOCK,
    output_format: OutputFormat | Literal["auto"] = "auto",
    retry_failed: bool = False,
    handle_signals: bool = False,
    show_progress: bool | None = None,
    status_interval: float | None = None,
) -> RunStats:
    """Every line of `requests_path` without a row in `save_path` done by `deadline_seconds` from now (or by the
    deadline a killed run recorded), at the least cost. `capacity`: the online limits the rescue counts on (default:
    the settings' limits). `http`, `transport` and `clock` as for `run_batch_job`. Returns the run's stats, with the
    plan's outcome in `stats.deadline_plan`."""
    options = dataclasses.replace(options, fallback="online")
    capacity = capacity or OnlineCapacity.of(settings.limits, settings.headroom)
    deadline_file = sidecar_path(Path(save_path), DEADLINE_SIDECAR)

    def build(parts: BatchRunParts) -> _AutoJob:
        deadline = _deadline(deadline_file, deadline_seconds, clock, recorded=bool(parts.state.parts))  # recorded before anything is sent
        lines = (_AutoMessageLines if parts.where.message_batches else _AutoLines)(
            settings, Path(requests_path), parts.writer, parts.state, options, prices.batch, clock, parts.stats, parts.display, parts.where.place,
        )
        lines.online_prices = prices.online
        return (_AutoMessageJob if parts.where.message_batches else _AutoJob)(lines, parts.api, transport, deadline, capacity)

    def finish(job: BatchesJob) -> None:
        auto = cast(_AutoJob, job)
        stats = auto.stats
        late = clock.now() - auto.deadline if stats.unfinished == 0 else 0.0
        stats.deadline_plan = dataclasses.replace(auto.lines.outcome(auto.cancels), late_seconds=max(0.0, late))
        if auto.stop_reason is None and not stats.unfinished:
            deadline_file.unlink(missing_ok=True)
        if late > 0:
            logger.warning("the last row was written %.1f s after the deadline", late)

    return await run_batches(
        settings, requests_path, save_path, SIDECARS, build, finish=finish, http=http, clock=clock,
        output_format=output_format, retry_failed=retry_failed, handle_signals=handle_signals, show_progress=show_progress,
        status_interval=status_interval,
    )


def _deadline(path: Path, seconds: float, clock: Clock, *, recorded: bool) -> float:
    """The plan's deadline on the run's own clock: the one an earlier run recorded beside its batches (a rerun
    continues that plan), else `seconds` from now, recorded before anything is sent."""
    deadline_at = _recorded_deadline(path) if recorded else None
    if deadline_at is not None:
        logger.warning("continuing the plan of an earlier run: its deadline (recorded in %s) is %.0f s from now", path, deadline_at - clock.wall())
    else:
        deadline_at = clock.wall() + seconds
        write_json_atomically(path, {"deadline_at": deadline_at})
    return clock.now() + (deadline_at - clock.wall())


def _recorded_deadline(path: Path) -> float | None:
    """The deadline a killed run recorded (epoch seconds), or None when there is none."""
    try:
        record = strict_json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, strict_json.InvalidJSON) as error:
        raise ResumeError(f"cannot read the recorded deadline {path}: {error}; it is left untouched (move it aside to start over)") from None
    value = record.get("deadline_at") if isinstance(record, dict) else None
    if not isinstance(value, int | float):
        raise ResumeError(f"{path} is not a deadline record of this tool; it is left untouched (move it aside to start over)")
    return float(value)


class _AutoLines(BatchLines):
    """Batch mode's lines, counting each row by the way it came (a batch's output, or online) and what it cost."""

    online_prices: PriceBook | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._route: Literal["batch", "online"] | None = None
        self.counts = {"batch": 0, "online": 0}
        self.dollars: dict[str, float | None] = {"batch": 0.0, "online": 0.0, "all_online": 0.0}

    def collect(self, *args: Any, **kwargs: Any) -> Any:
        route, self._route = self._route, "batch"  # the rescue's online runner may be writing meanwhile
        try:
            return super().collect(*args, **kwargs)
        finally:
            self._route = route

    async def send_online(
        self, transport: Transport | SendFunction | None, why: str = "to meet the deadline (the rescue)",
        source: AsyncIterable[APIRequest | RejectedLine] | None = None,
    ) -> str | None:
        self._route = "online"
        try:
            return await super().send_online(transport, why, source)
        finally:
            self._route = None

    def write(self, result: RequestResult) -> None:
        super().write(result)
        if self._route is None:
            return
        self.counts[self._route] += 1
        book = self.prices if self._route == "batch" else self.online_prices
        self._add(self._route, result, book)
        self._add("all_online", result, self.online_prices)

    def _add(self, key: str, result: RequestResult, book: PriceBook | None) -> None:
        usage = usage_tokens(result.response)
        if usage is None or self.dollars[key] is None:
            return
        price = book.price(result.request.get("model")) if book is not None else None
        self.dollars[key] = None if price is None else cast(float, self.dollars[key]) + price.dollars(*usage)

    def outcome(self, cancels: int) -> Outcome:
        return Outcome(
            self.counts["batch"], self.dollars["batch"], self.counts["online"], self.dollars["online"], self.dollars["all_online"], cancels,
        )

    def ledger(self) -> CostLedger:
        """The estimated tokens of the lines still without a row, per model (each part's average per line)."""
        ledger = CostLedger()
        for part in self.state.parts:
            pending = len(self.pending.get(part.number, ()))
            if pending:
                share = pending / max(1, part.count)
                ledger.add(part.model, int(part.input_tokens * share), int(part.output_tokens * share))
        return ledger

    def work(self, free_parts: Collection[int] = ()) -> Work:
        """The lines still without a row, their estimated tokens as the token limit counts them and as an output limit
        apart does (each part's average per line, as its endpoint counts them); of them free: the fallback's and those
        of `free_parts` (in no running batch, and none about to be sent)."""
        tokens = free_tokens = output = free_output = 0.0
        free_lines = len(self.fallback)
        per_line: list[tuple[float, float]] = []
        for part in self.state.parts:
            count, endpoint = max(1, part.count), self.endpoint_of(part)
            average = (endpoint.charged_tokens(part.input_tokens, part.output_tokens) / count, endpoint.reserved_output(part.output_tokens) / count)
            per_line.append(average)
            pending = len(self.pending.get(part.number, ()))
            tokens += average[0] * pending
            output += average[1] * pending
            if part.number in free_parts:
                free_lines += pending
                free_tokens += average[0] * pending
                free_output += average[1] * pending
        if self.fallback and per_line:  # lines of no part yet: counted as the heaviest part's
            heaviest_tokens = len(self.fallback) * max(charged for charged, _ in per_line)
            heaviest_output = len(self.fallback) * max(budget for _, budget in per_line)
            tokens, free_tokens = tokens + heaviest_tokens, free_tokens + heaviest_tokens
            output, free_output = output + heaviest_output, free_output + heaviest_output
        return Work(self.unfinished, int(tokens), free_lines, int(free_tokens), int(output), int(free_output))


class _AutoMessageLines(_AutoLines, MessageBatchLines):
    """`_AutoLines` for a Message Batches API."""


class _AutoJob(_BatchJob):
    """Batch mode's batches, with the deadline: the rescue cancels them and sends what they have not finished online."""

    lines: _AutoLines

    def __init__(self, lines: _AutoLines, api: BatchAPI, transport: Transport | SendFunction | None, deadline: float, capacity: OnlineCapacity) -> None:
        super().__init__(lines, api, None, transport)
        self.deadline = deadline
        self.capacity = capacity
        self.cancels = 0
        #: Parts whose batch the rescue waits for uncancelled: found by a guess, it may be another's.
        self.uncancelled: set[int] = set()
        #: Seconds allowed for cancelled batches to end: a twentieth of the plan's whole time, fixed now (were it a
        #: twentieth of the time left, it would be at its 5-s floor by the rescue, however long the deadline).
        self.cancel_allowance = cancel_seconds(deadline - self.clock.now())

    def plan(self) -> Estimate:
        ledger = self.lines.ledger()
        dollars = (ledger_dollars(ledger, self.lines.prices), ledger_dollars(ledger, self.lines.online_prices))
        return estimate(self.clock.now(), self.deadline, self.capacity, self.lines.work(), *dollars)

    def _work(self, queue: list[Part]) -> Work:
        """The unfinished lines; free of batches: the waiting parts' and, while those hold it, the queue's."""
        free = {part.number for part in self.waiting + self.requeued + (queue if self.waiting else [])}
        return self.lines.work(free)

    def _decision(self, queue: list[Part]) -> Decision:
        return decide(self.clock.now(), self.deadline, self.capacity, self._work(queue), self.cancel_allowance)

    async def _loop(self, queue: list[Part]) -> None:
        plan = self.plan()
        self.display.note(format_estimate(plan))
        if plan.route is Route.ONLINE or not self.capacity.known:
            why = "the deadline leaves no time to try a batch" if self.capacity.known else "no online limit is known to plan a rescue by"
            self.display.note(f"{why}: every line goes online now")
            await self._rescue(queue)
            return
        while True:
            queue[:0] = self.requeued  # a Message Batch found for a part proved another's: the part is sent again
            self.requeued.clear()
            while queue and not self.waiting and self.stop_reason is None and self._decision(queue) is Decision.WAIT:
                part = queue.pop(0)
                try:
                    await self._submit(part)
                except BatchAPIError as error:  # no batch for it: online capacity is the plan's rescue, used now
                    self.display.note(f"{part.describe()}: the Batch API did not take it ({error}); the rescue starts now")
                    queue.insert(0, part)
                    await self._rescue(queue)
                    return
            if self.stop_reason is not None:
                return
            if self._decision(queue) is Decision.RESCUE:
                await self._rescue(queue)
                return
            if not self.running:
                if not queue and not self.waiting:
                    return
                again = [part for part in self.waiting if part.number not in self._tried_alone]
                if again:  # refused for room while others ran: one more try with nothing else enqueued
                    self._tried_alone.update(part.number for part in again)
                    queue[:0] = again
                    self.waiting.clear()
                    continue
                await self._rescue(queue)  # refused with nothing running: the batches cannot take them, online can
                return
            rescue = rescue_at(self.clock.now(), self.deadline, self.capacity, self._work(queue), self.cancel_allowance)
            # Woken at the rescue time itself, not a poll later (the time moves a little later as the deadline nears).
            await self.clock.sleep(min(self.options.poll_interval, max(MIN_SLEEP, rescue - self.clock.now())))
            ended = await self._poll_until(rescue)
            self.display.tick()
            if ended and self.waiting:
                queue[:0] = self.waiting
                self.waiting.clear()

    async def _rescue(self, queue: list[Part]) -> None:
        """Cancel the running batches, keep what they finished, and send the rest online: the lines in no running
        batch at once, a cancelled batch's once it has ended and been collected (never a line a batch answered)."""
        work = self._work(queue)
        self.display.note(
            f"rescue: {work.lines:,} lines without a row, {self.deadline - self.clock.now():,.0f} s before the deadline; "
            f"{len(self.running)} batch(es) cancelled, the rest goes online"
        )
        give_up_at = max(self.deadline, self.clock.now()) + CANCEL_PATIENCE
        for part in queue + self.waiting + self.requeued:
            try:
                async with self._within(give_up_at):
                    made = await self._created_unrecorded(part)
            except (BatchAPIError, TimeoutError) as error:  # perhaps a batch of it runs: its lines wait for a rerun
                self.display.note(f"{part.describe()}: whether a stopped run made a batch of it is not known ({error}); left to a rerun")
                continue
            if not made:
                self._free(part)
        queue.clear()
        self.waiting.clear()
        self.requeued.clear()
        self.state.save()
        more = asyncio.Event()
        watching = True

        async def watch() -> None:
            """Cancel the running batches, then ask after them until every one has ended; free each one's unanswered
            lines. Meanwhile the free lines are already going online."""
            nonlocal watching
            try:
                for part in list(self.running):
                    if part.number not in self.uncancelled:
                        await self._cancel(part, give_up_at)
                while self.running and self.stop_reason is None:
                    if self.clock.now() >= give_up_at:
                        waited = ", ".join(str(part.batch_id) for part in self.running)
                        self.stop_reason = (
                            f"batch(es) {waited} still not ended {CANCEL_PATIENCE:,.0f} s after the deadline, though cancelled; their lines "
                            "are not sent online while a batch may still answer them: a rerun collects them"
                        )
                        logger.error("%s", self.stop_reason)
                        break
                    await self.clock.sleep(min(self.options.poll_interval, CANCEL_POLL_INTERVAL))
                    await self._poll_until(give_up_at)
                    for part in self.waiting + self.requeued:  # refused for room after all, or proved another's: never ran
                        self._free(part)
                    self.waiting.clear()
                    self.requeued.clear()
                    self.state.save()
                    more.set()
            finally:
                watching = False
                more.set()

        async def freed() -> AsyncIterator[APIRequest | RejectedLine]:
            sent: set[int] = set()
            while True:
                new = self.lines.fallback - sent
                sent |= new
                for item in self.lines.items(new):
                    yield item
                if (not watching and not self.lines.fallback - sent) or self.lines.online_stopping:
                    return
                with contextlib.suppress(TimeoutError):  # woken by newly free lines, or to see the runner stopped
                    async with asyncio.timeout(CANCEL_POLL_INTERVAL):
                        await more.wait()
                more.clear()

        async with asyncio.TaskGroup() as tasks:
            watching_task = tasks.create_task(watch())
            stopped = await self.lines.send_online(self.transport, "to meet the deadline (the rescue)", source=freed())
            if stopped is not None:  # the online runner stopped for good (a bad key, no quota): nothing more to wait for
                self.stop_reason = self.stop_reason or stopped
                watching_task.cancel()

    def _free(self, part: Part) -> None:
        """The part's lines go online: it never ran (or is not this run's to wait on)."""
        self.lines.fallback.update(self.lines.pending[part.number])
        self.lines.pending[part.number].clear()
        part.done = part.online = True  # recorded: a rerun sends its lines online too, never in a batch

    async def _created_unrecorded(self, part: Part) -> bool:
        """A part a killed run perhaps created a batch for, unrecorded (`_unrecorded`): that batch is watched (and
        cancelled, at the rescue), so its lines are not paid for twice. True when there was one."""
        found = await self._unrecorded(part)
        if found is None:
            return False
        part.batch_ids.append(found["id"])  # a plain id: the lookups check what they find
        self.running.append(part)
        return True

    def _within(self, until: float) -> asyncio.Timeout:
        """A bound on Batch API calls: none may hold the plan past `until` (each call alone may take 15 minutes)."""
        return asyncio.timeout(max(MIN_SLEEP, until - self.clock.now()))

    async def _poll_until(self, until: float) -> bool:
        """`_poll`, given up at `until` or when the Batch API does not answer: the batches are where they were, and
        the plan goes on without this answer (a download that failed leaves its batch to the next poll)."""
        try:
            async with self._within(until):
                return await self._poll()
        except (BatchAPIError, TimeoutError) as error:
            self.display.note(f"the Batch API did not answer ({error or 'in time'}); asked again")
            return False

    async def _cancel(self, part: Part, until: float) -> None:
        """Cancel the part's batch; one the API will not cancel now is waited for as it is (never sent online)."""
        assert part.batch_id is not None
        try:
            async with self._within(until):
                await self.api.cancel(part.batch_id)
        except (BatchAPIError, TimeoutError) as error:
            if not (isinstance(error, BatchAPIError) and error.status in (400, 404, 409)):  # 409: ended already; the poll says
                self.display.note(f"{part.describe()}: batch {part.batch_id} could not be cancelled ({error or 'no answer in time'}); waited for")
            return
        self.cancels += 1
        self.display.note(f"{part.describe()}: batch {part.batch_id} cancelled; what it finished is kept")


class _AutoMessageJob(_AutoJob, _MessageBatchJob):
    """`_AutoJob` over a Message Batches API (`_MessageBatchJob`'s calls, this job's loop and rescue)."""

    api: MessageBatchesAPI

    async def _created_unrecorded(self, part: Part) -> bool:
        """As `_AutoJob`'s, but the batch found is waited for, not cancelled: found by a guess, it may be another's
        (its results say), and the part's lines go online once it ends."""
        if not await super()._created_unrecorded(part):
            return False
        self.uncancelled.add(part.number)
        self.display.note(f"{part.describe()}: batch {part.batch_id} may be the one a stopped run created for it: waited for, not cancelled")
        return True


def ledger_dollars(ledger: CostLedger, prices: PriceBook | None) -> float | None:
    """What the ledger's tokens cost at these prices; None when a model has no price."""
    if prices is None:
        return None
    report = ledger.priced(prices)
    return None if report.unpriced else report.total
