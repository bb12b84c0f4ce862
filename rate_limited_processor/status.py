"""What the user sees: run counters, the live progress display, the status line, and the final summary.

`RunStats` is written by the dispatch loop alone (one place); the display, the status line and the summary
only read it. The status line (`StatusDigest`), the summary and its JSON record are pure: they take the
stats and `now`, so they are tested without running anything. At the default log level nothing is logged
per request: retries, 429s and failures are counted here and shown on the bar and in the status line,
and each is logged one by one at INFO.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .costs import CostLedger, CostReport, PriceBook, format_dollars, model_of, usage_tokens
from .lanes import LaneReport
from .limiter import Limits
from .models import RequestResult, ResultKind
from .rate_control import ControlReport

__all__ = [
    "RunStats",
    "RateMeter",
    "StatusDigest",
    "ProgressDisplay",
    "format_duration",
    "format_summary",
    "summary_record",
    "waiting_note",
]

Clock = Callable[[], float]

# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_SUCCEEDED, _INVALID = ResultKind.SUCCEEDED, ResultKind.INVALID
#: Seconds without an answer after which the display says it is waiting, rather than look frozen; once answers
#: are seen to take longer (a reasoning model's 30 s), the spell must also outlast the slowest of them by half.
WAITING_AFTER = 5.0


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
    """Counters for one run. Written by the dispatch loop; read by the display and the summary."""

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

    def record_attempt(self, tokens: int, *, is_retry: bool) -> None:
        self.attempts += 1
        self.retries += is_retry
        self.tokens_charged += tokens
        self.meter.record(tokens)

    def record_answer(self, now: float, *, rate_limited: bool, took: float = 0.0) -> None:
        """An attempt ended (answered, or given up on), `took` seconds after it was sent."""
        self.answers += 1
        self.last_answer_at = now
        self.slowest_answer = max(self.slowest_answer, took)
        self.rate_limit_errors += rate_limited

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
        model = model_of(result.request if isinstance(result.request, dict) else {}, response)
        self.estimated_tokens_succeeded += result.estimated_tokens
        self.estimated_cost.add(model, result.estimated_prompt_tokens, result.estimated_output_tokens)
        usage = usage_tokens(response)
        if usage is not None:
            prompt, output = usage
            self.reported_prompt_tokens += prompt
            self.reported_total_tokens += prompt + output
            self.spent.add(model, prompt, output)


@dataclass(frozen=True, slots=True)
class _Mark:
    """The counters at one moment, to tell what an interval added."""

    at: float
    attempts: int
    tokens: int
    retries: int
    rate_limit_errors: int
    failed: int

    @classmethod
    def of(cls, stats: RunStats, now: float) -> _Mark:
        return cls(now, stats.attempts, stats.tokens_charged, stats.retries, stats.rate_limit_errors, stats.failed)


class StatusDigest:
    """The one-line status, every `interval` seconds: how far the run is, what went wrong in the last interval
    (retries, rate-limit 429s, failures), the pace against the limits, the time left, and whether it waits.

    It stands in for the per-request log lines of the default level: a 10-million-line job prints one line
    every 30 s instead of one per retry. Pure: it reads the stats and the `now` it is given.
    """

    __slots__ = ("interval", "given", "_last")

    def __init__(self, stats: RunStats, interval: float, *, now: float, given: Limits | None = None) -> None:
        self.interval = interval
        #: The limits the user gave, to tell them from the ones learned from the API.
        self.given = given
        self._last = _Mark.of(stats, now)

    def due(self, now: float) -> bool:
        return self.interval > 0 and now - self._last.at >= self.interval

    def had_trouble(self, stats: RunStats) -> bool:
        """Retries, 429s or failures since the last line."""
        last = self._last
        return (stats.retries, stats.rate_limit_errors, stats.failed) != (last.retries, last.rate_limit_errors, last.failed)

    def line(self, stats: RunStats, now: float) -> str:
        """The status now, covering the time since the last line (and starting the next interval)."""
        last, mark = self._last, _Mark.of(stats, now)
        self._last = mark
        span = max(mark.at - last.at, 1e-9)
        parts = [
            _progress(stats),
            f"last {format_duration(span)}: {_plural(mark.retries - last.retries, 'retry', 'retries')}, "
            f"{mark.rate_limit_errors - last.rate_limit_errors:,} rate-limit 429s, {mark.failed - last.failed:,} failed",
            describe_pace((mark.attempts - last.attempts) * 60 / span, (mark.tokens - last.tokens) * 60 / span, stats.limits, self.given),
        ]
        eta = eta_seconds(stats, now)
        if eta is not None:
            parts.append(f"ETA {format_duration(eta)}")
        waiting = waiting_note(stats, now)
        if waiting is not None:
            parts.append(waiting)
        return "; ".join(parts)


def _progress(stats: RunStats) -> str:
    done = stats.skipped + stats.done
    text = f"{done:,}/{stats.total:,} done ({done / stats.total:.0%})" if stats.total else f"{done:,} done"
    if stats.skipped:
        text += f", {stats.skipped:,} of them by an earlier run"
    return text


def _plural(count: int, one: str, many: str) -> str:
    return f"{count:,} {one if count == 1 else many}"


def describe_pace(rpm: float, tpm: float, known: Limits, given: Limits | None) -> str:
    """"580 of 600 RPM, 42,000 of 60,000 TPM (limits learned)": the pace, what it is held to, and where each limit came from."""
    given = given if given is not None else Limits(None, None)
    parts, sources = [], {}
    for unit, rate, limit, stated in (
        ("RPM", rpm, known.requests_per_minute, given.requests_per_minute),
        ("TPM", tpm, known.tokens_per_minute, given.tokens_per_minute),
    ):
        if limit is None:
            parts.append(f"{rate:,.0f} {unit} (limit not known)")
        elif math.isinf(limit):
            parts.append(f"{rate:,.0f} {unit} (no limit)")
        else:
            parts.append(f"{rate:,.0f} of {limit:,.0f} {unit}")
            sources[unit] = "given" if stated == limit else "learned"
    text = ", ".join(parts)
    if len(sources) == 2 and len(set(sources.values())) == 1:
        return f"{text} (limits {sources['RPM']})"
    if sources:
        return f"{text} ({', '.join(f'{unit} limit {source}' for unit, source in sources.items())})"
    return text


def eta_seconds(stats: RunStats, now: float) -> float | None:
    """Seconds left at this run's own average pace (requests an earlier run finished are not part of it)."""
    elapsed = now - stats.started_at
    if stats.total is None or stats.done == 0 or elapsed <= 0:
        return None
    remaining = max(0, stats.total - stats.skipped - stats.done)
    return remaining * elapsed / stats.done


def waiting_note(stats: RunStats, now: float, *, short: bool = False) -> str | None:
    """"waiting: no answer for 12.0s, 40 in flight" when the API has gone quiet, so a stalled run does not look frozen."""
    if stats.finished_at is not None:
        return None
    quiet = now - (stats.last_answer_at if stats.last_answer_at is not None else stats.started_at)
    if quiet < max(WAITING_AFTER, 1.5 * stats.slowest_answer):
        return None
    if short:  # the bar's line, where every column counts
        return f"no answer for {format_duration(quiet)}, {stats.in_flight:,} in flight"
    if stats.in_flight:
        return f"waiting: no answer for {format_duration(quiet)}, {stats.in_flight:,} in flight"
    return f"waiting: no answer for {format_duration(quiet)}, nothing in flight (paced, paused after a 429, or backing off)"


def _short(value: float | None) -> str:
    """A rate in a few characters, for the bar: 580, 42k, 1.5M; ? when not known."""
    if value is None:
        return "?"
    if math.isinf(value):
        return "∞"
    if value >= 10_000_000:
        return f"{value / 1e6:.0f}M"
    if value >= 1_000_000:
        return f"{value / 1e6:.1f}M"
    if value >= 10_000:
        return f"{value / 1e3:.0f}k"
    return f"{value:,.0f}"


def bar_postfix(stats: RunStats, now: float, given: Limits | None = None, width: int | None = None) -> str:
    """The bar's second line: the pace against the limits, what went wrong so far, and any wait.

    Fitted to `width` columns by leaving out what matters least first (the learned mark, the token pace, the
    retries, then the wait), so the request pace against its limit, the 429s and the failures always show.
    """
    rpm, tpm = stats.meter.per_minute()
    limits = stats.limits
    learned = given is not None and (limits.requests_per_minute, limits.tokens_per_minute) != (given.requests_per_minute, given.tokens_per_minute)
    waiting = waiting_note(stats, now, short=width is not None)
    # (what it says, how much it matters: 0 always shown, higher left out first)
    pieces: list[tuple[str, int]] = [
        (f"{_short(rpm)}/{_short(limits.requests_per_minute)} RPM", 0),
        (f"{_short(tpm)}/{_short(limits.tokens_per_minute)} TPM", 3),
        (" (learned)" if learned else "", 4),
        (_plural(stats.retries, "retry", "retries"), 2),
        (f"{stats.rate_limit_errors:,} 429s", 0),
        (f"{stats.failed:,} failed", 0),
        (f"; held by --max_in_flight {stats.max_in_flight:,}" if stats.at_in_flight_cap else "", 1),
        (f"; {waiting}" if waiting is not None else "", 1),
    ]
    for leave_out in (None, 4, 3, 2, 1):
        if leave_out is not None:
            pieces = [(text, weight) for text, weight in pieces if weight < leave_out]
        text = ""
        for piece, _ in pieces:
            if piece:
                text += piece if not text or piece.startswith((" ", ";")) else f", {piece}"
        if width is None or len(text) <= width:
            return text
    return text[:width]


#: The bar's first line: done/total, this run's rate and the time left (its second line is `bar_postfix`).
_BAR_FORMAT = "{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]"


class ProgressDisplay:
    """What a person watching the run sees.

    - On a terminal, a tqdm bar: done/total, starting at what an earlier run finished (and saying so); the
      rate and ETA of this run's own work; the pace against the limits; retries, 429s and failures; and
      "waiting" when the API goes quiet. A status line is printed above it for an interval that had
      retries, 429s or failures, so the scrollback keeps a record.
    - Elsewhere (cron, nohup, a pipe, or --no_progress), a one-line status every `status_interval` seconds.

    `tick()` is called every second or so, and `update()` after each result.
    """

    def __init__(
        self,
        stats: RunStats,
        *,
        enabled: bool,
        status_interval: float | None = None,
        given: Limits | None = None,
        stream: TextIO | None = None,
        width: int | None = None,
    ) -> None:
        self._stats = stats
        self._given = given
        self._stream = stream
        self._width = width  # None: the terminal's, as it is at each redraw
        self._bar: Any = None
        self._line: Any = None
        now = stats.clock()
        self._digest = StatusDigest(stats, status_interval, now=now, given=given) if status_interval else None
        if enabled:
            from tqdm import tqdm

            skipped = stats.skipped
            # Two lines, so that on an 80-column terminal nothing that matters is cut off: the bar with done/total,
            # the rate and the time left; under it, the pace against the limits, 429s and failures (`bar_postfix`).
            self._bar = tqdm(
                total=stats.total, initial=skipped, unit="req", file=self._out(), dynamic_ncols=width is None, ncols=width,
                smoothing=0,  # the rate is this run's average: skipped lines are in `initial`, not in the rate
                desc=f"resumed, {skipped:,} done before: " if skipped else None, bar_format=_BAR_FORMAT, position=0,
            )
            self._line = tqdm(total=0, file=self._out(), bar_format="{desc}", position=1, dynamic_ncols=width is None, ncols=width)

    @property
    def active(self) -> bool:
        """Whether anything is shown while the run goes on (and so whether `tick` needs calling)."""
        return self._bar is not None or self._digest is not None

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def note(self, text: str) -> None:
        """A line for the person watching (above the bar on a terminal)."""
        if self._bar is not None:
            self._bar.write(text, file=self._out())
        elif self.active:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", file=self._out(), flush=True)

    def update(self) -> None:
        """A result arrived: move the bar (tqdm redraws at most ten times a second)."""
        if self._bar is None:
            return
        skipped = self._stats.skipped
        self._bar.initial = skipped
        self._bar.update(skipped + self._stats.done - self._bar.n)

    def tick(self) -> None:
        """Redraw the bar (so an outage shows as waiting, not as a frozen bar), and print a status line when one is due."""
        now = self._stats.clock()
        if self._bar is not None:
            self.update()
            self._bar.refresh()
            self._show_postfix(now)
        digest = self._digest
        if digest is not None and digest.due(now):
            trouble = digest.had_trouble(self._stats)
            line = digest.line(self._stats, now)
            if self._bar is None or trouble:
                self.note(line)

    def _show_postfix(self, now: float) -> None:
        width = self._width or self._bar.ncols or shutil.get_terminal_size().columns  # tqdm's: the terminal's at its last redraw
        self._line.set_description_str(bar_postfix(self._stats, now, self._given, width - 1), refresh=True)

    def close(self) -> None:
        if self._bar is not None:
            self.update()
            self._show_postfix(self._stats.clock())
            self._bar.close()
            self._line.close()


def format_summary(
    stats: RunStats, *, save_path: str | None = None, prices: PriceBook | None = None, max_cost_usd: float | None = None,
    given: Limits | None = None,
) -> str:
    """The end-of-run report: what happened, how fast against the limits (and whether a limit `given` was lowered to
    what the API states), what it cost (with `prices`), and where the results are."""
    minutes = stats.elapsed / 60.0
    rpm = stats.attempts / minutes
    tpm = stats.tokens_charged / minutes
    lines = ["", "rate_limited_processor summary"]
    if stats.stop_reason:
        lines.append(f"  STOPPED EARLY: {stats.stop_reason}")
    of_total = f" of {stats.total:,}" if stats.total is not None else ""
    lines.append(f"  requests done    {stats.already_done + stats.done:,}{of_total}")
    if stats.already_done:
        lines.append(f"    already done   {stats.already_done:,} (results of an earlier run; not sent again)")
    lines.append(f"    succeeded      {stats.succeeded:,}")
    lines.append(f"    failed         {stats.failed:,} after their last attempt")
    lines.append(f"    invalid input  {stats.invalid:,} (recorded, not sent)")
    if stats.failed_earlier:
        lines.append(
            f"    failed before  {stats.failed_earlier:,} rows of earlier runs are failures, not sent again; "
            "--retry_failed sends them again"
        )
    if stats.orphan_rows:
        lines.append(f"  note             {stats.orphan_rows:,} rows of an earlier run match no input line (input edited since?)")
    if stats.stop_reason:
        not_done = f"{stats.total - stats.done - stats.already_done:,}" if stats.total is not None else "the rest"
        lines.append(f"    not finished   {not_done} (no final answer, so no row); rerun to send them")
    lines.append(f"  attempts         {stats.attempts:,} ({stats.retries:,} retries, {stats.rate_limit_errors:,} rate-limit 429s)")
    lines.append(f"  elapsed          {format_duration(stats.elapsed)}")
    lines.extend(_throughput_lines(stats, rpm, tpm, given))
    if stats.succeeded:
        lines.append(
            f"  tokens           estimated {stats.estimated_tokens_succeeded:,} (charged to the token limit); "
            f"reported by the API {stats.reported_total_tokens:,} ({stats.reported_prompt_tokens:,} prompt)"
        )
    if abs(stats.server_token_ratio - 1) >= 0.02:
        lines.append(f"                   the API's rate limiter charged about {stats.server_token_ratio:.2f}x our estimates (paced to match)")
    lines.extend(_control_lines(stats, minutes))
    lines.extend(_in_flight_lines(stats))
    lines.extend(_lane_lines(stats))
    if prices is not None:
        lines.extend(_cost_lines(stats, prices, max_cost_usd))
    if save_path:
        lines.append(f"  results          {save_path}")
    return "\n".join(lines)


def _control_lines(stats: RunStats, minutes: float) -> list[str]:
    """What the closed-loop rate control found, when the server's 429s made it act: a limit for next time."""
    control = stats.control
    if control is None or control.cuts == 0:
        return []
    admitted = (stats.attempts - stats.rate_limit_errors) / minutes
    found = []
    if control.found_requests_per_minute is not None:
        rpm = _round_figure(control.found_requests_per_minute)
        found.append(f"about {rpm:,.0f} RPM (next time: --max_requests_per_minute {rpm:.0f})")
    if control.found_tokens_per_minute is not None:
        tpm = _round_figure(control.found_tokens_per_minute)
        found.append(f"about {tpm:,.0f} TPM (next time: --max_tokens_per_minute {tpm:.0f})")
    line = f"  rate control     sent at about {admitted:,.0f} RPM after {stats.rate_limit_errors:,} rate-limit 429s"
    if found:
        line += "; the server's limit appears to be " + " and ".join(found)
    return [line]


def _in_flight_lines(stats: RunStats) -> list[str]:
    """Whether `--max_in_flight` held the run below its limits: at a long latency, a rate needs rate x latency
    requests in flight (Little's law), and the cap, not the API, then sets the pace."""
    cap, needed = stats.max_in_flight, stats.needed_in_flight
    if cap is None or not stats.in_flight_cap_waits or needed is None or not math.isfinite(needed) or needed <= cap:
        return []
    enough = _round_figure(needed * 1.2)
    return [
        f"  in flight        --max_in_flight {cap:,} held the pace below the limits: at the latency seen they need about "
        f"{needed:,.0f} in flight; --max_in_flight {enough:.0f} would not bind"
    ]


def _cost_lines(stats: RunStats, prices: PriceBook, max_cost_usd: float | None) -> list[str]:
    """What the succeeded requests cost by the API's reported usage, beside what they were estimated to cost."""
    spent, estimated = stats.spent.priced(prices), stats.estimated_cost.priced(prices)
    lines = []
    if estimated.by_model:
        pricing = "batch prices" if prices.batch else "online prices"
        lines.append(
            f"  cost (USD)       spent {format_dollars(spent.total)} by the API's reported usage; estimated {format_dollars(estimated.total)} "
            f"for the same {estimated.requests:,} requests (prompt + completion budget); at {pricing}"
        )
        spent_by_model = {cost.model: cost for cost in spent.by_model}
        for cost in estimated.by_model:
            if cost.price is None:
                lines.append(f"                   {cost.model}: {cost.requests:,} requests, no price known (see --price_input_per_mtok)")
                continue
            paid = spent_by_model.get(cost.model)
            lines.append(
                f"                   {cost.model}: {cost.requests:,} requests, {format_dollars((paid.dollars or 0.0) if paid else 0.0)} spent, "
                f"{format_dollars(cost.dollars or 0.0)} estimated (${cost.price.input_per_mtok:g} / ${cost.price.output_per_mtok:g} per million "
                f"input / output tokens; {cost.price.source})"
            )
    if max_cost_usd is not None:
        lines.append(f"  budget           {format_dollars(max_cost_usd)} (--max_cost_usd), for this run")
    return lines


def cost_record(stats: RunStats, prices: PriceBook, max_cost_usd: float | None) -> dict[str, Any]:
    """The summary's dollars as data: spent (reported usage) and estimated, per model and in total."""
    spent: CostReport = stats.spent.priced(prices)
    estimated = stats.estimated_cost.priced(prices)
    return {
        "pricing": "batch" if prices.batch else "online",
        "spent_usd": spent.record()["usd"],
        "estimated_usd": estimated.record()["usd"],
        "max_cost_usd": max_cost_usd,
        "spent": spent.record(),
        "estimated": estimated.record(),
    }


def _lane_lines(stats: RunStats) -> list[str]:
    """Each account's and model's share, and the limits its headers stated: where the work went."""
    lanes = stats.lanes if len(stats.lanes) > 1 else []
    lines = ["  lanes            (account/model: requests sent, their share; the limits its headers stated)"] if lanes else []
    sent = sum(lane.sent for lane in lanes) or 1
    for lane in lanes:
        name = f"{lane.account}/{lane.model}" if lane.model else lane.account
        line = f"    {name:<14} {lane.sent:,} sent ({lane.sent / sent:.0%}), {lane.succeeded:,} succeeded, {lane.rate_limited:,} rate-limit 429s"
        stated = _stated(lane.learned)
        if stated:
            line += f"; {stated}"
        if lane.found_requests_per_minute is not None:
            line += f"; its limit appears to be about {_round_figure(lane.found_requests_per_minute):,.0f} RPM"
        lines.append(line)
    for account, reason in stats.dropped_accounts.items():
        lines.append(f"  dropped account  {account}: {reason}")
    return lines


def _stated(limits: Limits) -> str:
    parts = [
        f"{value:,.0f} {unit}"
        for value, unit in ((limits.requests_per_minute, "RPM"), (limits.tokens_per_minute, "TPM"), (limits.output_tokens_per_minute, "output TPM"))
        if value is not None and math.isfinite(value)
    ]
    return ", ".join(parts)


def _round_figure(value: float) -> float:
    """Three significant figures: a measured limit is not known to the request."""
    if value <= 0 or not math.isfinite(value):
        return value
    return float(f"{value:.3g}")


def _throughput_lines(stats: RunStats, rpm: float, tpm: float, given: Limits | None) -> list[str]:
    """The pace against the limits, only where it means something: not for a run with no success (its "rate"
    is of failures), nor against rate limits for the Batch API (none paces it, and it charges no tokens to one)."""
    if not stats.succeeded:
        return ["  throughput       none: no request succeeded"]
    if stats.batch:
        done = stats.succeeded + stats.failed
        return [f"  throughput       {done / (stats.elapsed / 60.0):,.0f} requests/min, through the Batch API (no rate limit paces it)"]
    given = given if given is not None else Limits(None, None)
    return [
        f"  throughput       {rpm:,.0f} requests/min{_of_limit(rpm, stats.limits.requests_per_minute, given.requests_per_minute)}",
        f"                   {tpm:,.0f} tokens/min{_of_limit(tpm, stats.limits.tokens_per_minute, given.tokens_per_minute)}",
    ]


def _of_limit(value: float, limit: float | None, given: float | None = None) -> str:
    if limit is None:
        return " (limit not known: the API sent no x-ratelimit headers)"
    if math.isinf(limit):
        return " (no limit set)"
    if given is not None and limit < given * 0.999:
        return f" ({value / limit:.0%} of the {limit:,.0f} limit the API states; the {given:,.0f} given was lowered to it)"
    return f" ({value / limit:.0%} of the {limit:,.0f} limit)"


def format_duration(seconds: float) -> str:
    """1.5s, 12m05s, 3h04m10s."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def summary_record(
    stats: RunStats | None,
    *,
    exit_code: int,
    exit_meaning: str,
    given: Limits,
    headroom: float = 1.0,
    error: str | None = None,
    requests_path: str | None = None,
    save_path: str | None = None,
    prices: PriceBook | None = None,
    max_cost_usd: float | None = None,
) -> dict[str, Any]:
    """The summary as data, for `--summary_json`: the same facts as `format_summary`, plus the exit code.

    `stats` is None for a run refused before it started (exit code 2): the counts are then zero and
    `error` says why. Limits are requests and tokens per minute; null where not known.
    """
    if stats is None:
        stats = RunStats(given, started_at=0.0, finished_at=0.0)
    not_finished = max(0, stats.total - stats.done - stats.already_done) if stats.total is not None else None
    return {
        "exit_code": exit_code,
        "exit_meaning": exit_meaning,
        "stop_reason": stats.stop_reason,
        "error": error,
        "total": stats.total,
        "already_done": stats.already_done,
        "succeeded": stats.succeeded,
        "failed": stats.failed,
        "invalid": stats.invalid,
        "not_finished": not_finished,
        "attempts": stats.attempts,
        "retries": stats.retries,
        "rate_limit_429s": stats.rate_limit_errors,
        "elapsed_s": round(stats.elapsed, 3),
        "tokens_charged": stats.tokens_charged,
        "tokens_estimated_succeeded": stats.estimated_tokens_succeeded,
        "tokens_reported_total": stats.reported_total_tokens,
        "tokens_reported_prompt": stats.reported_prompt_tokens,
        "limits": {
            "given": _limits_record(given),
            "used": _limits_record(stats.limits),
            "learned": _limits_record(_learned(stats.limits, given)),
            "headroom": headroom,
        },
        "server_token_ratio": round(stats.server_token_ratio, 3),
        "rate_control": _control_record(stats.control),
        "lanes": [_lane_record(lane) for lane in stats.lanes] if len(stats.lanes) > 1 else [],
        "dropped_accounts": dict(stats.dropped_accounts),
        "failed_earlier": stats.failed_earlier,
        "orphan_rows": stats.orphan_rows,
        "cost": cost_record(stats, prices, max_cost_usd) if prices is not None else None,
        "requests_file": requests_path,
        "results_file": save_path,
    }


def _control_record(control: ControlReport | None) -> dict[str, Any] | None:
    """What the closed-loop rate control found: its cuts, and where the server's limit appears to be."""
    if control is None:
        return None
    return {
        "cuts": control.cuts,
        "found_requests_per_minute": None if control.found_requests_per_minute is None else round(control.found_requests_per_minute, 1),
        "found_tokens_per_minute": None if control.found_tokens_per_minute is None else round(control.found_tokens_per_minute, 1),
    }


def _lane_record(lane: LaneReport) -> dict[str, Any]:
    return {
        "account": lane.account,
        "model": lane.model,
        "sent": lane.sent,
        "succeeded": lane.succeeded,
        "rate_limit_429s": lane.rate_limited,
        "learned": _limits_record(lane.learned),
        "found_requests_per_minute": None if lane.found_requests_per_minute is None else round(lane.found_requests_per_minute, 1),
    }


def _learned(known: Limits, given: Limits) -> Limits:
    """The limits that did not come from the user: learned from the API's headers or its 429s."""
    def learned(value: float | None, stated: float | None) -> float | None:
        return value if value is not None and value != stated else None

    return Limits(learned(known.requests_per_minute, given.requests_per_minute), learned(known.tokens_per_minute, given.tokens_per_minute))


def _limits_record(limits: Limits) -> dict[str, float | str | None]:
    def value(rate: float | None) -> float | str | None:
        if rate is None:
            return None
        return "unlimited" if math.isinf(rate) else round(rate, 3)

    record = {"requests_per_minute": value(limits.requests_per_minute), "tokens_per_minute": value(limits.tokens_per_minute)}
    if limits.output_tokens_per_minute is not None:
        record["output_tokens_per_minute"] = value(limits.output_tokens_per_minute)
    return record
