"""The lines of a `--mode batch` run (`batch_job.py`): planned into parts, read again when a part is uploaded or
answered, and each given its row, from its batch's answer or, with the online fallback, from the online runner;
and, for a run that stops first, how to collect or cancel the batches it leaves running.

Each custom_id sent is "line-<line number>-<the line's identity>", so an answer is matched to its line, and a
line edited since its batch was created is not given another line's answer. The input file's line and the output
file's line are shaped and read by `providers/openai.py`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
from collections import Counter
from collections.abc import AsyncIterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any, Literal

from ..base import strict_json
from ..base.clock import Clock
from ..base.errors import InvalidRequest, RunStopped
from ..base.models import APIRequest, RejectedLine, RequestResult, ResultKind
from ..config.credentials import scrubber_for
from ..config.settings import DEFAULT_BATCH_MAX_LINES, DEFAULT_BATCH_POLL_INTERVAL, Settings
from ..core.budget import Budget
from ..core.costs import PriceBook, format_dollars, usage_tokens
from ..core.retry_policy import answer_problem
from ..core.stats import RunStats
from ..engine.processor import Processor
from ..files.request_io import ResultWriter, parse_request_line
from ..files.resume import identity_of_item
from ..providers import openai as api_shapes
from ..providers.endpoints import Endpoint, check_request
from ..providers.provider import BatchPlace
from ..providers.registry import key_variable_holding, provider_for
from ..providers.token_estimation import TokenEstimator
from ..transport.http import SendFunction, Transport
from ..ui.display import ProgressDisplay
from .batch_state import BatchState, Part
from .pipeline import invalid_row

__all__ = ["BatchOptions", "Fallback", "BatchLines", "index_answers", "say_what_runs", "failure_row"]

logger = logging.getLogger("rate_limited_processor")

Fallback = Literal["none", "online"]


@dataclass(frozen=True, slots=True)
class BatchOptions:
    """How a file is cut into batches, how often they are asked after, and what becomes of lines they fail."""

    max_lines: int = DEFAULT_BATCH_MAX_LINES
    max_bytes: int = api_shapes.BATCH_MAX_BYTES
    poll_interval: float = DEFAULT_BATCH_POLL_INTERVAL
    fallback: Fallback = "none"

    def __post_init__(self) -> None:
        if self.max_lines < 1 or self.max_bytes < 1 or not self.poll_interval > 0:
            raise ValueError("max_lines and max_bytes must be at least 1, poll_interval positive")


@dataclass(slots=True)
class _Group:
    """The lines of one endpoint and model gathered so far for the next part."""

    lines: list[int] = field(default_factory=list)
    bytes: int = 0
    input_tokens: int = 0
    output_tokens: int = 0


class BatchLines:
    """The run's lines: which part each waits on, and the row each is given (through the run's writer)."""

    def __init__(
        self, settings: Settings, requests_path: Path, writer: ResultWriter, state: BatchState, options: BatchOptions,
        prices: PriceBook | None, clock: Clock, stats: RunStats, display: ProgressDisplay, place: BatchPlace | None = None,
    ) -> None:
        """`place`: where the provider keeps its Batch API when not OpenAI's way (how it names endpoints, the model
        of a line naming none)."""
        self.place = place
        self.settings = settings
        self.requests_path = requests_path
        self.writer = writer
        self.state = state
        self.options = options
        self.prices = prices
        self.clock = clock
        self.stats = stats
        self.display = display
        self.estimator = TokenEstimator(settings.token_encoding_name)
        self._scrub = scrubber_for(settings)
        #: The lines of each part still without a row.
        self.pending: dict[int, set[int]] = {part.number: set() for part in state.parts}
        #: Lines the batches failed or let expire, for `--batch_fallback online`.
        self.fallback: set[int] = set()
        #: Each new line's estimate (all tokens, of them the completion budget), kept from planning for its row.
        self._estimates: dict[int, tuple[int, int, int]] = {}
        self._groups: dict[tuple[str, str | None], _Group] = {}
        self._online: Processor | None = None

    @property
    def unfinished(self) -> int:
        """Lines still without a row: waiting on a part, or on the online fallback."""
        return sum(len(lines) for lines in self.pending.values()) + len(self.fallback)

    # -- planning: one pass over the input -----------------------------------------------------------

    def plan(self, item: APIRequest | RejectedLine) -> None:
        """A line without a row: a failure row now (it cannot be sent), a line of a recorded part, or one for a new part."""
        if isinstance(item, RejectedLine):
            self.write(invalid_row(item))
            return
        part = self.state.part_holding(item.index)
        if part is not None:
            self.pending[part.number].add(item.index)
            return
        try:
            _, endpoint, prompt, completion = check_request(item, self.settings.request_url, self.estimator.estimate_parts)
            if (refusal := self.refusal(endpoint)) is not None:
                raise InvalidRequest(refusal)
        except InvalidRequest as error:
            self.write(invalid_row(item, f"{item.name}: {error}"))
            return
        model = item.body.get("model") if isinstance(item.body.get("model"), str) else self.place.model if self.place is not None else None
        key = self.group_key(endpoint, model)
        size = self.line_size(item, key[0])
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

    # The batch API's own rules, overridden for another batch API (`message_batches.MessageBatchLines`).

    def refusal(self, endpoint: Endpoint) -> str | None:
        """Why this batch API cannot take a line for `endpoint`; None when it can."""
        return endpoint.batch_api_refusal

    def group_key(self, endpoint: Endpoint, model: str | None) -> tuple[str, str | None]:
        """What lines of one part share: the endpoint's path and the model (a batch takes one of each)."""
        return (api_shapes.batch_endpoint(endpoint.value), model)

    @staticmethod
    def endpoint_of(part: Part) -> Endpoint:
        """The endpoint of the part's lines (each part holds one: its group key's)."""
        return Endpoint(api_shapes.endpoint_of_batch(part.endpoint))

    def line_size(self, item: APIRequest, endpoint: str) -> int:
        """The bytes the line takes in its part's upload."""
        return _batch_line_size(item, endpoint)

    def custom_id(self, part: Part, item: APIRequest) -> str:
        """The custom_id the line is sent under (its answer is found by it)."""
        return _custom_id(item)

    def read_result(
        self, item: APIRequest, endpoint: Endpoint, answer: dict[str, Any] | None, batch: dict[str, Any], estimate: tuple[int, int, int],
    ) -> tuple[RequestResult, bool]:
        """A line's row from its answer, and whether another try could change it (for the fallback)."""
        return _result(item, endpoint, answer, batch, estimate)

    def close_groups(self) -> None:
        """The lines gathered last become parts too: every line planned is now in a part."""
        for key in list(self._groups):
            self._close_group(key)

    def _close_group(self, key: tuple[str, str | None]) -> None:
        group = self._groups.pop(key)
        part = self.state.new_part(key[0], key[1], group.lines, group.input_tokens, group.output_tokens)
        self.pending[part.number] = set(group.lines)

    def content(self, part: Part) -> bytes:
        """The part's Batch input file: one line per input line of it, as the Batch API takes them."""
        endpoint = self.batch_endpoint(part)
        lines = [_batch_line(item, endpoint, self._body_sent(item)) for item in self.items(set(part.line_numbers())) if isinstance(item, APIRequest)]
        return ("\n".join(lines) + "\n").encode()

    def batch_endpoint(self, part: Part) -> str:
        """How the batch and its lines name the part's endpoint ("/v1/chat/completions"; Azure's without /v1)."""
        return self.place.endpoint(part.endpoint) if self.place is not None else part.endpoint

    def _body_sent(self, item: APIRequest) -> dict[str, Any]:
        """The line's body as its batch sends it: naming the place's model when it names none (its custom_id is
        still the line's own)."""
        if self.place is None or self.place.model is None or isinstance(item.body.get("model"), str):
            return item.body
        return {**item.body, "model": self.place.model}

    # -- rows ---------------------------------------------------------------------------------------------

    def collect(self, part: Part, batch: dict[str, Any], output: IO[bytes], answers: dict[str, int]) -> tuple[float, Counter[str]]:
        """A row for each of the part's lines without one, from the batch's downloaded `output` (`answers`: custom_id ->
        offset): the dollars they cost, and how many ended how."""
        endpoint = self.endpoint_of(part)
        spent = 0.0
        outcomes: Counter[str] = Counter()
        expected = {self.custom_id(part, item): item for item in self.items(self.pending[part.number]) if isinstance(item, APIRequest)}
        foreign = sum(1 for custom_id in answers if custom_id not in expected)
        if foreign:  # a mangled or foreign custom_id is nobody's answer, and takes no line's place
            logger.warning("batch %s: %d output lines carry a custom_id this run did not send for them; they are ignored", part.batch_id, foreign)
        for custom_id, item in expected.items():
            offset = answers.get(custom_id)
            answer = self._read_answer(output, offset) if offset is not None else None
            result, retryable = self.read_result(item, endpoint, answer, batch, self._estimate(item))
            self.stats.record_answer(self.clock.now(), rate_limited=False)
            if retryable and self.options.fallback == "online":
                self.fallback.add(item.index)
                self.pending[part.number].discard(item.index)
                outcomes["to send online"] += 1
                continue
            outcomes[result.kind.value] += 1
            self.write(result)
            self.pending[part.number].discard(item.index)
            spent += self._spent(result)
        return spent, outcomes

    def fail(self, part: Part, reason: str) -> None:
        """The whole batch failed: its lines end as failures, or go online with the fallback."""
        for item in self.items(self.pending[part.number]):
            self.stats.record_answer(self.clock.now(), rate_limited=False)
            if self.options.fallback == "online" and isinstance(item, APIRequest):
                self.fallback.add(item.index)
            elif isinstance(item, APIRequest):
                self.write(RequestResult(item.index, item.body, item.metadata, None, (reason,), 1, ResultKind.FAILED, custom_id=item.custom_id))
        self.pending[part.number].clear()

    async def send_online(
        self, transport: Transport | SendFunction | None, why: str = "that the batches failed or let expire (--batch_fallback online)",
        source: AsyncIterable[APIRequest | RejectedLine] | None = None,
    ) -> str | None:
        """`--batch_fallback online`: the lines the batches failed or let expire, through the online runner. The
        reason it stopped, if it did. `why` says, after "sending N lines online", why they go. `source`: the lines
        as they become free to go (each of them in `fallback` by then), instead of those in `fallback` now."""
        lines = self.fallback
        self.display.note(f"sending {len(lines):,} lines online {why}")
        processor = self._online = Processor(self.settings, transport=transport, clock=self.clock)
        stopped_for = None
        try:
            async with processor.run(source if source is not None else (item for item in self.items(lines))) as results:
                async for result in results:
                    self.write(result)
                    lines.discard(result.index)
        except RunStopped as stopped:
            stopped_for = f"the online fallback stopped: {stopped}"
        self.stats.attempts += processor.stats.attempts
        self.stats.retries += processor.stats.retries
        self.stats.rate_limit_errors += processor.stats.rate_limit_errors
        return stopped_for

    @property
    def online_stopping(self) -> bool:
        """The online runner stopped taking lines (a bad key, no quota, Ctrl-C): a source of lines may end now."""
        return self._online is not None and self._online.stopping

    def write(self, result: RequestResult) -> None:
        self.writer.write(result)
        self.stats.record_result(result)
        self.display.update()

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
        price = self.prices.price(result.request.get("model")) if self.prices is not None and usage is not None else None
        return price.dollars(*usage) if price is not None and usage is not None else 0.0

    def items(self, lines: set[int]) -> Iterator[APIRequest | RejectedLine]:
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


def failure_row(item: APIRequest, estimate: tuple[int, int, int]) -> RequestResult:
    """The row a batch's line starts from, with its estimate (charged, prompt, completion): a failure, one attempt,
    no errors yet; its answer, or why it has none, is put in."""
    tokens, prompt, completion = estimate
    return RequestResult(
        item.index, item.body, item.metadata, None, (), 1, ResultKind.FAILED, estimated_tokens=tokens,
        estimated_output_tokens=completion, custom_id=item.custom_id, estimated_prompt_tokens=prompt,
    )


def _result(
    item: APIRequest, endpoint: Endpoint, answer: dict[str, Any] | None, batch: dict[str, Any], estimate: tuple[int, int, int],
) -> tuple[RequestResult, bool]:
    """A line's row from its Batch output line, and whether another try could change it (for the fallback)."""
    failed = failure_row(item, estimate)
    if answer is None:  # none, or only one for the line as it was (edited since): another try can have it
        reason = (
            f"batch {batch.get('id')} ended ({api_shapes.batch_status(batch)}) without an answer for this line as it is now (was it edited "
            "since the batch was created?); rerun with --retry_failed to send it again"
        )
        return replace(failed, errors=(reason,)), True
    read = api_shapes.read_batch_answer(answer)
    status, body = read.status, read.body
    if status is not None and 200 <= status < 300 and isinstance(body, dict) and answer_problem(endpoint, body) is None:
        return replace(failed, response=body, kind=ResultKind.SUCCEEDED, status=status, request_id=read.request_id), False
    return replace(failed, errors=(read.reason,), status=status, request_id=read.request_id, error_body=body), read.retryable


def _batch_line(item: APIRequest, endpoint: str, body: dict[str, Any] | None = None) -> str:
    line = api_shapes.batch_line(_custom_id(item), endpoint, item.body if body is None else body)
    return json.dumps(line, ensure_ascii=False, separators=(",", ":"))


def _batch_line_size(item: APIRequest, endpoint: str) -> int:
    """The bytes `_batch_line` takes, newline included, without hashing the line for its custom_id."""
    body = json.dumps(item.body, ensure_ascii=False, separators=(",", ":")).encode()
    return api_shapes.batch_line_size(len(f"line-{item.index}-") + 16, endpoint, body)


def _custom_id(item: APIRequest) -> str:
    return f"line-{item.index}-{identity_of_item(item):016x}"


def index_answers(file: IO[bytes], start: int, answers: dict[str, int]) -> None:
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


def say_what_runs(state: BatchState, api_root: str, budget: Budget | None, query: str = "") -> None:
    """How to collect or cancel the batches left running (never the key: the variable it comes from)."""
    running = [part for part in state.parts if not part.done and part.batch_id is not None]
    if not running:
        return
    lines = [f"{len(running)} batch{'es' if len(running) > 1 else ''} left running at the API:"]
    lines.extend(f"  {part.batch_id}: {part.describe()}" for part in running)
    lines.append(f"rerun the same command to collect their results (they are recorded in {state.path}), or cancel them:")
    def cancel_url(batch_id: str | None) -> str:  # shell-quoted: a query's & and ?, and whatever an id holds
        return shlex.quote(api_root + api_shapes.batch_cancel_path(str(batch_id)) + (f"?{query}" if query else ""))

    auth = provider_for(api_root).curl_auth(key_variable_holding(api_root, os.environ))
    lines.extend(f"  curl -X POST {cancel_url(part.batch_id)} {auth}" for part in running)
    logger.warning("%s", "\n".join(lines))
    if budget is not None and budget.in_flight:
        logger.warning("those batches may still cost up to %s (estimated)", format_dollars(budget.in_flight))
