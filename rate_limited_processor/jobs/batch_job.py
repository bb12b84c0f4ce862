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

Each custom_id sent is "line-<line number>-<the line's identity>", so an answer is matched to its line, and a
line edited since its batch was created is not given another line's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from ..base import strict_json
from ..base.clock import LOOP_CLOCK, Clock
from ..base.errors import InvalidRequest, RunStopped
from ..base.models import APIRequest, RejectedLine, RequestResult, ResultKind
from ..config.credentials import auth_headers, scrubber_for
from ..config.settings import BATCH_API_MAX_BYTES, DEFAULT_BATCH_MAX_LINES, DEFAULT_BATCH_POLL_INTERVAL, Settings
from ..core.budget import Budget
from ..core.costs import PriceBook, format_dollars, usage_tokens
from ..core.retry_policy import answer_problem
from ..core.stats import RunStats
from ..engine.processor import Processor
from ..files.output_file import OutputLock, check_output_path
from ..files.request_io import OutputFormat, ResultWriter, count_lines, detect_output_format, parse_request_line, read_requests
from ..files.resume import identity_of_item, prepare_results_file, sidecar_path
from ..files.side_files import JOB_SIDECARS, named
from ..providers.endpoints import Endpoint, check_request, resolve_url
from ..providers.registry import provider_for
from ..providers.token_estimation import TokenEstimator
from ..transport.http import SendFunction, Transport
from ..ui.display import ProgressDisplay
from .batch_api import AiohttpBatchHTTP, BatchAPI, BatchAPIError, BatchHTTP
from .batch_state import PART_METADATA_KEY, BatchState, Part
from .file_job import note_repairs, on_stop_signals, skip_done

__all__ = ["BatchOptions", "Fallback", "run_batch_job", "api_root", "SIDECAR_KIND"]

logger = logging.getLogger("rate_limited_processor")

Fallback = Literal["none", "online"]
#: The sidecar's name beside the results: `<results>.batches`.
SIDECAR_KIND = "batches"
#: How a batch says the enqueued-token limit refused it.
_ROOM_CODES = frozenset({"token_limit_exceeded"})
_RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
_ENDED = frozenset({"completed", "expired", "cancelled"})
#: A line's answer that another try (online) could change: the batch ran out of time, or the server failed.
_RETRYABLE_CODES = frozenset({"batch_expired", "batch_cancelled"})


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How a file is cut into batches, how often they are asked after, and what becomes of lines they fail."""

    max_lines: int = DEFAULT_BATCH_MAX_LINES
    max_bytes: int = BATCH_API_MAX_BYTES
    poll_interval: float = DEFAULT_BATCH_POLL_INTERVAL
    fallback: Fallback = "none"

    def __post_init__(self) -> None:
        if self.max_lines < 1 or self.max_bytes < 1 or not self.poll_interval > 0:
            raise ValueError("max_lines and max_bytes must be at least 1, poll_interval positive")


async def run_batch_job(
    settings: Settings,
    requests_path: str | Path,
    save_path: str | Path,
    *,
    options: BatchOptions = BatchOptions(),
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
    requests_path, save_path = Path(requests_path), Path(save_path)
    check_output_path(requests_path, save_path, sidecars=(*JOB_SIDECARS, SIDECAR_KIND))
    with OutputLock(save_path) as lock:
        if output_format == "auto":
            output_format = detect_output_format(requests_path)
        try:
            done, report = prepare_results_file(save_path, retry_failed=retry_failed)
        except OSError as error:  # a full disk while indexing or repairing: one line naming the file, not a bug
            raise named(error, save_path) from None
        lock.follow()
        note_repairs(save_path, report)
        root = api_root(settings.request_url)
        state = BatchState.load(sidecar_path(save_path, SIDECAR_KIND), root)
        network = http if http is not None else AiohttpBatchHTTP()
        api = BatchAPI(root, auth_headers(settings), http=network, scrub=scrubber_for(settings), clock=clock)
        stats = RunStats(settings.limits, started_at=clock.now(), clock=clock.now, batch=True)
        stats.failed_earlier = report.failure_rows
        stats.earlier_rows = len(done)
        stats.total = count_lines(requests_path)
        if show_progress is None:
            show_progress = sys.stderr.isatty()
        display = ProgressDisplay(stats, enabled=show_progress, status_interval=status_interval, given=settings.limits)
        try:
            with ResultWriter(save_path, output_format, index=True) as writer:
                job = _BatchJob(settings, requests_path, writer, state, api, options, prices, budget, clock, stats, display, transport)
                remove_handlers = job.handle_signals() if handle_signals else _nothing
                try:
                    for item in skip_done(read_requests(requests_path), done):
                        job.plan(item)
                    stats.already_done = done.claimed
                    await job.run()
                    moved = writer.check_moved()
                    if moved is not None:
                        logger.error("%s", moved)
                        stats.stop_reason = stats.stop_reason or moved
                finally:
                    remove_handlers()
        finally:
            stats.already_done = done.claimed
            stats.finished_at = clock.now()
            display.close()
            if isinstance(network, AiohttpBatchHTTP) and http is None:
                await network.aclose()
        return stats


@dataclass(slots=True)
class _Group:
    """The lines of one endpoint and model gathered so far for the next part."""

    lines: list[int] = field(default_factory=list)
    bytes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class _BatchJob:
    """One batch-mode run: plan the parts, send them, collect them, write a row per line."""

    def __init__(
        self, settings: Settings, requests_path: Path, writer: ResultWriter, state: BatchState, api: BatchAPI, options: BatchOptions,
        prices: PriceBook | None, budget: Budget | None, clock: Clock, stats: RunStats, display: ProgressDisplay,
        transport: Transport | SendFunction | None,
    ) -> None:
        self.settings = settings
        self.requests_path = requests_path
        self.writer = writer
        self.state = state
        self.api = api
        self.options = options
        self.prices = prices
        self.budget = budget
        self.clock = clock
        self.stats = stats
        self.display = display
        self.transport = transport
        self.estimator = TokenEstimator(settings.token_encoding_name)
        self._scrub = scrubber_for(settings)
        #: The parts on record before this run sent anything about them (of an earlier run, or tried already), by number.
        self.recorded = {part.number for part in state.parts}
        #: The lines of each part still without a row.
        self.pending: dict[int, set[int]] = {part.number: set() for part in state.parts}
        #: Each new line's estimate (all tokens, of them the completion budget), kept from planning for its row.
        self._estimates: dict[int, tuple[int, int, int]] = {}
        self._groups: dict[tuple[str, str | None], _Group] = {}
        #: Parts whose batch runs now, and parts refused for the enqueued-token limit, waiting for room.
        self.running: list[Part] = []
        self.waiting: list[Part] = []
        #: Parts tried again for room while none of this run's batches ran: refused again, they stop the run.
        self._tried_alone: set[int] = set()
        #: Parts' dollars held in the budget while they run.
        self._reserved: dict[int, float] = {}
        self.fallback_lines: set[int] = set()
        self.stop_reason: str | None = None
        self._task: asyncio.Task[Any] | None = None

    # -- planning: one pass over the input -----------------------------------------------------------

    def plan(self, item: APIRequest | RejectedLine) -> None:
        """A line without a row: a failure row now (it cannot be sent), a line of a recorded part, or one for a new part."""
        if isinstance(item, RejectedLine):
            metadata = {"custom_id": item.custom_id} if item.custom_id is not None else None
            self._write(RequestResult(item.index, item.content, metadata, None, (item.reason,), 0, ResultKind.INVALID, custom_id=item.custom_id))
            return
        part = self.state.part_holding(item.index)
        if part is not None:
            self.pending[part.number].add(item.index)
            return
        try:
            _, endpoint, prompt, completion = check_request(item, self.settings.request_url, self.estimator.estimate_parts)
            if (refusal := endpoint.batch_api_refusal) is not None:
                raise InvalidRequest(refusal)
        except InvalidRequest as error:
            result = RequestResult(item.index, item.body, item.metadata, None, (f"{item.name}: {error}",), 0, ResultKind.INVALID, custom_id=item.custom_id)
            self._write(result)
            return
        model = item.body.get("model") if isinstance(item.body.get("model"), str) else None
        key = (f"/v1/{endpoint.value}", model)
        size = _batch_line_size(item, key[0])
        group = self._groups.setdefault(key, _Group())
        if group.lines and (len(group.lines) >= self.options.max_lines or group.bytes + size > self.options.max_bytes):
            self._close_group(key)
            group = self._groups[key] = _Group()
        tokens = endpoint.charged_tokens(prompt, completion)
        self._estimates[item.index] = (tokens, prompt, completion)
        group.lines.append(item.index)
        group.bytes += size
        group.input_tokens += prompt
        group.output_tokens += completion

    def _close_group(self, key: tuple[str, str | None]) -> None:
        group = self._groups.pop(key)
        part = self.state.new_part(key[0], key[1], group.lines, group.input_tokens, group.output_tokens)
        self.pending[part.number] = set(group.lines)

    # -- the run --------------------------------------------------------------------------------------

    async def run(self) -> None:
        for key in list(self._groups):
            self._close_group(key)
        self.state.save()  # every part is on record before anything about it is sent
        self._task = asyncio.current_task()
        queue: list[Part] = []
        for part in self.state.parts:
            part.done = not self.pending[part.number]
            if part.done:
                continue
            if part.batch_id is not None:  # running, or ended with lines still without a row: asked after, collected again
                self.running.append(part)
            else:
                queue.append(part)
        try:
            await self._loop(queue)
            if self.stop_reason is None and self.fallback_lines:
                await self._send_online()
        except asyncio.CancelledError:
            if self.stop_reason is None:
                raise
            if self._task is not None:
                self._task.uncancel()
        except BatchAPIError as error:
            self.stop_reason = f"{error}; a rerun resumes"
            logger.error("%s", self.stop_reason)
        self.stats.unfinished = sum(len(lines) for lines in self.pending.values()) + len(self.fallback_lines)
        if self.stop_reason is None and self.stats.unfinished:  # never "all is well" while a line lacks its row
            self.stop_reason = f"{self.stats.unfinished:,} lines have no row yet; a rerun collects or sends them"
            logger.error("%s", self.stop_reason)
        if self.stop_reason is not None:
            self.stats.stop_reason = self.stop_reason
            self._say_what_runs()
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
        prices = self.budget.prices if self.budget is not None else self.prices
        price = prices.price(part.model) if prices is not None else None
        return None if price is None else price.dollars(part.input_tokens, part.output_tokens)

    async def _submit(self, part: Part) -> None:
        """Upload the part's input file (unless it is on record or was uploaded unrecorded), then create its batch."""
        recorded = part.number in self.recorded
        if part.file_id is None:
            found = await self.api.find_file(part.filename) if recorded else None
            if found is None:
                found = await self.api.upload(part.filename, self._content(part))
            part.file_id = _id_of(found, "file")
            self.state.save()
        found = await self.api.find_batch(PART_METADATA_KEY, part.token) if recorded else None
        if found is not None and found.get("input_file_id") == part.file_id and found.get("id") not in part.batch_ids:
            batch = found
        else:
            batch = await self.api.create(part.file_id, part.endpoint, {PART_METADATA_KEY: part.token})
        part.batch_ids.append(_id_of(batch, "batch"))
        self.state.save()
        self.recorded.add(part.number)  # on record now: a later try of it looks for what this one made
        if self.budget is not None:
            cost = self._part_cost(part) or 0.0
            self.budget.reserve(cost)
            self._reserved[part.number] = cost
        self.stats.attempts += len(self.pending[part.number])
        self.running.append(part)
        self.display.note(f"{part.describe()}: batch {part.batch_id} created from file {part.file_id}")

    def _content(self, part: Part) -> bytes:
        """The part's Batch input file: one line per input line of it, as the Batch API takes them."""
        lines = [_batch_line(item, part.endpoint) for item in self._items(set(part.line_numbers())) if isinstance(item, APIRequest)]
        return ("\n".join(lines) + "\n").encode()

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
                    f"batch {part.batch_id} is not known to the API (HTTP 404: deleted, or created with another key or project), so "
                    "its answers cannot be had; rerun with --retry_failed to send these lines again"
                ))
                continue
            status = batch.get("status")
            if status in _RUNNING:
                continue
            self.running.remove(part)
            if status == "failed" and _error_codes(batch) & _ROOM_CODES:
                self.display.note(f"{part.describe()}: batch {part.batch_id} refused for the enqueued-token limit; it waits for an earlier batch to end")
                self._release(part, 0.0)
                self.waiting.append(part)
                continue
            ended = True
            if status in _ENDED:
                await self._collect(part, batch)
            else:
                self._fail_part(part, f"batch {part.batch_id} {status}: {_errors_text(batch)}")
        return ended

    async def _collect(self, part: Part, batch: dict[str, Any]) -> None:
        """Download what the batch answered and write a row for each of the part's lines without one."""
        with tempfile.TemporaryFile(dir=self.writer.path.parent) as output:
            answers: dict[str, int] = {}
            for name in ("output_file_id", "error_file_id"):
                file_id = batch.get(name)
                if isinstance(file_id, str):
                    start = output.seek(0, 2)
                    await self.api.download(file_id, output)
                    _index_answers(output, start, answers)
            endpoint = Endpoint(part.endpoint.removeprefix("/v1/"))
            spent = 0.0
            outcomes: Counter[str] = Counter()
            expected = {_custom_id(item): item for item in self._items(self.pending[part.number]) if isinstance(item, APIRequest)}
            foreign = sum(1 for custom_id in answers if custom_id not in expected)
            if foreign:  # a mangled or foreign custom_id is nobody's answer, and takes no line's place
                logger.warning("batch %s: %d output lines carry a custom_id this run did not send for them; they are ignored", part.batch_id, foreign)
            for custom_id, item in expected.items():
                offset = answers.get(custom_id)
                answer = self._read_answer(output, offset) if offset is not None else None
                result, retryable = self._result(item, endpoint, answer, batch)
                self.stats.record_answer(self.clock.now(), rate_limited=False)
                if retryable and self.options.fallback == "online":
                    self.fallback_lines.add(item.index)
                    self.pending[part.number].discard(item.index)
                    outcomes["to send online"] += 1
                    continue
                outcomes[result.kind.value] += 1
                self._write(result)
                self.pending[part.number].discard(item.index)
                spent += self._spent(result)
        self._release(part, spent)
        part.done = not self.pending[part.number]
        self.state.save()
        counts = ", ".join(f"{count:,} {outcome}" for outcome, count in outcomes.items()) or "no rows to write"
        self.display.note(f"{part.describe()}: batch {part.batch_id} {batch.get('status')}: {counts}")

    def _fail_part(self, part: Part, reason: str) -> None:
        """The whole batch failed (not for room): its lines end as failures, or go online with the fallback."""
        reason = self._scrub(reason)
        logger.error("%s: %s", part.describe(), reason)
        for item in self._items(self.pending[part.number]):
            self.stats.record_answer(self.clock.now(), rate_limited=False)
            if self.options.fallback == "online" and isinstance(item, APIRequest):
                self.fallback_lines.add(item.index)
            elif isinstance(item, APIRequest):
                self._write(RequestResult(item.index, item.body, item.metadata, None, (reason,), 1, ResultKind.FAILED, custom_id=item.custom_id))
        self.pending[part.number].clear()
        self._release(part, 0.0)
        part.done = True
        self.state.save()

    def _result(self, item: APIRequest, endpoint: Endpoint, answer: dict[str, Any] | None, batch: dict[str, Any]) -> tuple[RequestResult, bool]:
        """A line's row from its Batch output line, and whether another try could change it (for the fallback)."""
        tokens, prompt, completion = self._estimate(item)
        failed = RequestResult(
            item.index, item.body, item.metadata, None, (), 1, ResultKind.FAILED, estimated_tokens=tokens,
            estimated_output_tokens=completion, custom_id=item.custom_id, estimated_prompt_tokens=prompt,
        )
        if answer is None:  # none, or only one for the line as it was (edited since): another try can have it
            reason = (
                f"batch {batch.get('id')} ended ({batch.get('status')}) without an answer for this line as it is now (was it edited "
                "since the batch was created?); rerun with --retry_failed to send it again"
            )
            return replace(failed, errors=(reason,)), True
        response, error = answer.get("response"), answer.get("error")
        if isinstance(response, dict) and isinstance(response.get("status_code"), int):
            status, body = response["status_code"], response.get("body")
            request_id = response.get("request_id") if isinstance(response.get("request_id"), str) else None
            if 200 <= status < 300 and isinstance(body, dict) and answer_problem(endpoint, body) is None:
                return replace(failed, response=body, kind=ResultKind.SUCCEEDED, status=status, request_id=request_id), False
            reason = f"HTTP {status} {_message_of(body)}"
            return replace(failed, errors=(reason,), status=status, request_id=request_id, error_body=body), status == 429 or status >= 500
        code = error.get("code") if isinstance(error, dict) else None
        return replace(failed, errors=(f"{code or 'error'}: {_message_of({'error': error})}",)), code in _RETRYABLE_CODES

    def _estimate(self, item: APIRequest) -> tuple[int, int, int]:
        """The line's estimate, (charged, prompt, completion): kept from planning, or (a line of an earlier run's
        part) made again."""
        known = self._estimates.pop(item.index, None)
        if known is not None:
            return known
        _, endpoint, prompt, completion = check_request(item, self.settings.request_url, self.estimator.estimate_parts)
        return endpoint.charged_tokens(prompt, completion), prompt, completion

    def _read_answer(self, file: IO[bytes], offset: int) -> dict[str, Any] | None:
        """The output line at `offset`, scrubbed of credentials as every answer is before it is written."""
        file.seek(offset)
        text = file.readline().decode("utf-8", errors="replace")
        try:
            answer = strict_json.loads(text)
        except strict_json.InvalidJSON:
            return None
        return self._scrub.scrub_decoded(answer, text) if isinstance(answer, dict) else None

    def _spent(self, result: RequestResult) -> float:
        usage = usage_tokens(result.response)
        prices = self.budget.prices if self.budget is not None else self.prices
        price = prices.price(result.request.get("model")) if prices is not None and usage is not None else None
        return price.dollars(*usage) if price is not None and usage is not None else 0.0

    def _release(self, part: Part, spent: float) -> None:
        if self.budget is not None:
            self.budget.settle(self._reserved.pop(part.number, 0.0), spent)

    async def _send_online(self) -> None:
        """`--batch_fallback online`: the lines the batches failed or let expire, through the online runner."""
        lines = self.fallback_lines
        self.display.note(f"sending {len(lines):,} lines online that the batches failed or let expire (--batch_fallback online)")
        processor = Processor(self.settings, transport=self.transport, clock=self.clock)
        try:
            async with processor.run(item for item in self._items(lines)) as results:
                async for result in results:
                    self._write(result)
                    lines.discard(result.index)
        except RunStopped as stopped:
            self.stop_reason = f"the online fallback stopped: {stopped}"
        self.stats.attempts += processor.stats.attempts
        self.stats.retries += processor.stats.retries
        self.stats.rate_limit_errors += processor.stats.rate_limit_errors

    def _write(self, result: RequestResult) -> None:
        self.writer.write(result)
        self.stats.record_result(result)
        self.display.update()

    def _items(self, lines: set[int]) -> Iterator[APIRequest | RejectedLine]:
        """The input lines with these numbers, read again (only those are parsed)."""
        if not lines:
            return
        last = max(lines)
        with open(self.requests_path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                if number in lines:
                    yield parse_request_line(raw, number)
                if number >= last:
                    return

    # -- stopping -------------------------------------------------------------------------------------

    def handle_signals(self) -> Callable[[], None]:
        """Ctrl-C or SIGTERM: stop sending and asking; the batches created keep running at the API."""

        def on_signal(name: str) -> None:
            if self.stop_reason is None:
                self.stop_reason = f"interrupted by {name}"
                logger.warning("%s: stopping; the batches created keep running at the API", name)
            if self._task is not None and not self._task.done():
                self._task.cancel()

        return on_stop_signals(on_signal)

    def _say_what_runs(self) -> None:
        """How to collect or cancel the batches left running (never the key: the variable it comes from)."""
        running = [part for part in self.state.parts if not part.done and part.batch_id is not None]
        if not running:
            return
        lines = [f"{len(running)} batch{'es' if len(running) > 1 else ''} left running at the API:"]
        lines.extend(f"  {part.batch_id}: {part.describe()}" for part in running)
        lines.append(f"rerun the same command to collect their results (they are recorded in {self.state.path}), or cancel them:")
        lines.extend(f"  curl -X POST {self.api.root}/batches/{part.batch_id}/cancel {provider_for(self.api.root).curl_auth()}" for part in running)
        logger.warning("%s", "\n".join(lines))
        if self.budget is not None and self.budget.in_flight:
            logger.warning("those batches may still cost up to %s (estimated)", format_dollars(self.budget.in_flight))


def api_root(request_url: str) -> str:
    """The API root the Files and Batches endpoints hang from: "https://api.openai.com/v1" for any of its endpoints."""
    parts = urlsplit(resolve_url(request_url, "/v1/batches"))
    return urlunsplit((parts.scheme, parts.netloc, parts.path.removesuffix("/batches"), "", ""))


def _batch_line(item: APIRequest, endpoint: str) -> str:
    return json.dumps({"custom_id": _custom_id(item), "method": "POST", "url": endpoint, "body": item.body}, ensure_ascii=False, separators=(",", ":"))


def _batch_line_size(item: APIRequest, endpoint: str) -> int:
    """The bytes `_batch_line` takes, newline included, without hashing the line for its custom_id."""
    body = json.dumps(item.body, ensure_ascii=False, separators=(",", ":")).encode()
    custom_id = len(f"line-{item.index}-") + 16
    return len(body) + custom_id + len(endpoint) + len('{"custom_id":"","method":"POST","url":"","body":}') + 1


def _custom_id(item: APIRequest) -> str:
    return f"line-{item.index}-{identity_of_item(item):016x}"


def _index_answers(file: IO[bytes], start: int, answers: dict[str, int]) -> None:
    """Where each answer is in a downloaded output or error file: custom_id -> offset. Keyed by the whole custom_id
    (line number and the line's identity), so an answer under a mangled or foreign id never displaces a line's own;
    the first answer for an id is kept."""
    file.seek(start)
    offset = start
    for raw in file:
        with contextlib.suppress(strict_json.InvalidJSON, UnicodeDecodeError, ValueError, AttributeError):
            custom_id = strict_json.loads(raw.decode("utf-8")).get("custom_id")
            if isinstance(custom_id, str):
                answers.setdefault(custom_id, offset)
        offset += len(raw)


def _id_of(value: dict[str, Any], what: str) -> str:
    identifier = value.get("id")
    if not isinstance(identifier, str) or not identifier:
        raise BatchAPIError(f"the API's answer for a new {what} has no id")
    return identifier


def _error_codes(batch: dict[str, Any]) -> set[str]:
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    return {error["code"] for error in data or () if isinstance(error, dict) and isinstance(error.get("code"), str)}


def _errors_text(batch: dict[str, Any]) -> str:
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    texts = [
        f"{error.get('code')}: {error.get('message')}" + (f" (line {error['line']} of its file)" if error.get("line") else "")
        for error in data or () if isinstance(error, dict)
    ]
    return "; ".join(texts[:3]) or "no reason given"


def _message_of(body: Any) -> str:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or ""
        return f"{kind}: {error.get('message', '')}".strip(": ")
    return "(no error message)"


def _nothing() -> None:
    return None
