"""The run's counters: what was sent, answered, retried and spent, and the rates measured.

`RunStats` is written through its methods by the engine (the jobs set what they know of the input: its total,
the rows an earlier run left); the display, the status line and the summary (`ui/`) only read it. At the
default log level nothing is logged per request: retries, 429s and failures are counted here, shown on the
bar and in the status line, and logged one by one at INFO.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..base.models import RequestResult, ResultKind
from .costs import CostLedger, is_flex, model_of, usage_tokens
from .deadline_plan import Outcome
from .limiter import Limits
from .rate_control import ControlReport

__all__ = ["Clock", "LaneReport", "RateMeter", "RunStats"]

Clock = Callable[[], float]

# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_SUCCEEDED, _INVALID = ResultKind.SUCCEEDED, ResultKind.INVALID


@dataclass(frozen=True, slots=True)
class LaneReport:
    """What one lane did, for the summary: its share of the work and the limits it learned."""

    account: str
    model: str
    sent: int
    succeeded: int
    rate_limited: int
    #: The account's limits for this model as the headers stated them (None: not stated).
    learned: Limits
    #: Where the rate control found the server's limit (requests per minute), when it had to.
    found_requests_per_minute: float | None


class RateMeter:
    """Requests and tokens per minute over the last `window` seconds, for the live display."""

    __slots__ = ("window", "clock", "_events", "_tokens_in_window")

    def __init__(self, window: float = 10.0, *, clock: Clock = time.monotonic) -> None:
        self.window = window
        self.clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0

    def record(self, tokens: int) -> None:
        now = self.clock()
        self._events.append((now, tokens))
        self._tokens_in_window += tokens
        self._prune(now)

    def per_minute(self) -> tuple[float, float]:
        """(requests, tokens) per minute over the window."""
        now = self.clock()
        self._prune(now)
        scale = 60.0 / self.window
        return len(self._events) * scale, self._tokens_in_window * scale

    def _prune(self, now: float) -> None:
        horizon = now - self.window
        while self._events and self._events[0][0] < horizon:
            _, tokens = self._events.popleft()
            self._tokens_in_window -= tokens


@dataclass(slots=True)
class RunStats:
    """Counters for one run. Written by the engine through its methods; read by the display and the summary."""

    limits: Limits
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    #: Where `elapsed` and the rate meter read the time: the run's clock.
    clock: Clock = field(default=time.monotonic, repr=False)
    #: Requests in the input, when known (the file job counts lines first).
    total: int | None = None
    succeeded: int = 0
    #: Requests recorded as failed after their last attempt (API errors, retries exhausted).
    failed: int = 0
    #: Lines recorded as failed without sending: not JSON, not an object, missing a required field.
    invalid: int = 0
    #: HTTP attempts sent, first tries and retries alike.
    attempts: int = 0
    #: Attempts that were retries.
    retries: int = 0
    #: Rate-limit 429s received.
    rate_limit_errors: int = 0
    #: No-capacity 429s received (Flex's `resource_unavailable`): the provider's capacity, not our rate limit.
    no_capacity_errors: int = 0
    #: Attempts that have ended: an answer came, or none will (a reset, a timeout).
    answers: int = 0
    #: When the last attempt ended (the run's clock); None before the first.
    last_answer_at: float | None = None
    #: The longest an attempt has taken to end, so far: a quiet spell shorter than answers take is not news.
    slowest_answer: float = 0.0
    #: Tokens charged against the TPM limit, over all attempts.
    tokens_charged: int = 0
    #: For succeeded requests: our estimate vs. what the API's `usage` reported (`costs.usage_tokens`: the
    #: prompt with any cached part, and the total as prompt plus output).
    estimated_tokens_succeeded: int = 0
    reported_prompt_tokens: int = 0
    reported_total_tokens: int = 0
    #: Requests that had been read but had no final result when the run stopped early.
    unfinished: int = 0
    #: Requests skipped because the results file already had their final row (a resumed run). Counted as
    #: the input is read, so it grows during the run.
    already_done: int = 0
    #: Final rows the results file held when the run started: about how many requests it will skip.
    earlier_rows: int = 0
    #: Rows of an earlier run that matched no input line (the input was edited since?).
    orphan_rows: int = 0
    #: How the server counted our tokens, as learned from its headers: 1.2 = 20% more than we estimated.
    server_token_ratio: float = 1.0
    #: Why dispatch stopped before the input was exhausted (None when it ran to the end).
    stop_reason: str | None = None
    #: Failure rows an earlier run left in the results file (not sent again without --retry_failed).
    failed_earlier: int = 0
    #: What the closed-loop rate control found (set at the end of a run).
    control: ControlReport | None = None
    #: `--max_in_flight`, times the run had to wait for one of its slots, whether it waits now, and the requests
    #: in flight the limits in force need at the latency seen (Little's law; set at the end of a run).
    max_in_flight: int | None = None
    in_flight_cap_waits: int = 0
    at_in_flight_cap: bool = False
    needed_in_flight: float | None = None
    #: What each (account, model) lane did, when a run had more than one (set at the end of a run).
    lanes: list[LaneReport] = field(default_factory=list)
    #: Accounts the run stopped using, and why (a refused key, no quota).
    dropped_accounts: dict[str, str] = field(default_factory=dict)
    #: For succeeded requests, per model: our estimate (prompt, completion budget) and the API's reported usage.
    estimated_cost: CostLedger = field(default_factory=CostLedger, repr=False)
    spent: CostLedger = field(default_factory=CostLedger, repr=False)
    #: Sent through the Batch API (`--mode batch`): no rate limit paced it, and no token was charged to one.
    batch: bool = False
    #: `--mode auto --deadline`: how the lines went (through batches, online), what that cost, and the batches cancelled.
    deadline_plan: Outcome | None = None
    meter: RateMeter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.meter = RateMeter(clock=self.clock)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.invalid

    @property
    def in_flight(self) -> int:
        """Attempts sent and not yet ended."""
        return self.attempts - self.answers

    @property
    def skipped(self) -> int:
        """Requests an earlier run finished: as far as the input has been read, or as the results file promises."""
        return max(self.already_done, self.earlier_rows)

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else self.clock()
        return max(end - self.started_at, 1e-9)

    def start(self, clock: Clock) -> None:
        """The run starts now, on this clock (the meter reads the same time, at less cost per attempt)."""
        self.clock = self.meter.clock = clock
        self.started_at = clock()

    def stop(self, reason: str) -> None:
        """The run takes no more requests, for this reason. The first reason wins."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def waiting_for_slot(self, waiting: bool) -> None:
        """Every in-flight slot is taken (`--max_in_flight`, not the limits, sets the pace now), or one came free."""
        self.in_flight_cap_waits += waiting
        self.at_in_flight_cap = waiting

    def pace(self, limits: Limits, server_token_ratio: float | None) -> None:
        """The limits the run's pace is held against, and the servers' token count over ours (None: not known)."""
        self.limits = limits
        if server_token_ratio is not None:
            self.server_token_ratio = server_token_ratio

    def finish(
        self, now: float, *, unfinished: int, control: ControlReport | None, needed_in_flight: float | None,
        lanes: list[LaneReport], dropped_accounts: dict[str, str],
    ) -> None:
        """The run ended at `now`: what it left unfinished, and what its rate control and lanes found."""
        self.unfinished = unfinished
        self.finished_at = now
        self.control = control
        self.needed_in_flight = needed_in_flight
        self.lanes = lanes
        self.dropped_accounts = dropped_accounts

    def record_attempt(self, tokens: int, *, is_retry: bool) -> None:
        self.attempts += 1
        self.retries += is_retry
        self.tokens_charged += tokens
        self.meter.record(tokens)

    def record_answer(self, now: float, *, rate_limited: bool, took: float = 0.0, no_capacity: bool = False) -> None:
        """An attempt ended (answered, or given up on), `took` seconds after it was sent."""
        self.answers += 1
        self.last_answer_at = now
        self.slowest_answer = max(self.slowest_answer, took)
        self.rate_limit_errors += rate_limited
        self.no_capacity_errors += no_capacity

    def record_result(self, result: RequestResult) -> None:
        """Count a result the consumer has taken (so one that could not be written is not counted)."""
        kind = result.kind
        if kind is _SUCCEEDED:
            self.succeeded += 1
            if result.response is not None:
                self._record_tokens(result, result.response)
        elif kind is _INVALID:
            self.invalid += 1
        else:
            self.failed += 1

    def _record_tokens(self, result: RequestResult, response: dict[str, Any]) -> None:
        """A succeeded request's tokens: our estimate against the API's `usage` (`costs.usage_tokens`, read
        once), in all and per model for the summary's dollars."""
        body = result.request if isinstance(result.request, dict) else {}
        model, flex = model_of(body, response), is_flex(body)
        self.estimated_tokens_succeeded += result.estimated_tokens
        self.estimated_cost.add(model, result.estimated_prompt_tokens, result.estimated_output_tokens, flex=flex)
        usage = usage_tokens(response)
        if usage is not None:
            prompt, output = usage
            self.reported_prompt_tokens += prompt
            self.reported_total_tokens += prompt + output
            self.spent.add(model, prompt, output, flex=flex)
