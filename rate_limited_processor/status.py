"""What the user sees: run counters, the live progress bar, and the final summary.

`RunStats` is written by the dispatch loop alone (one place); the progress bar and the summary only
read it. The summary is pure text formatting, so it is tested without running anything.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from .limiter import Limits
from .models import RequestResult, ResultKind
from .rate_control import ControlReport

__all__ = ["RunStats", "RateMeter", "ProgressDisplay", "format_duration", "format_summary"]

Clock = Callable[[], float]


class RateMeter:
    """Requests and tokens per minute over the last `window` seconds, for the live display."""

    __slots__ = ("window", "_clock", "_events", "_tokens_in_window")

    def __init__(self, window: float = 10.0, *, clock: Clock = time.monotonic) -> None:
        self.window = window
        self._clock = clock
        self._events: deque[tuple[float, int]] = deque()
        self._tokens_in_window = 0

    def record(self, tokens: int) -> None:
        now = self._clock()
        self._events.append((now, tokens))
        self._tokens_in_window += tokens
        self._prune(now)

    def per_minute(self) -> tuple[float, float]:
        """(requests, tokens) per minute over the window."""
        now = self._clock()
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
    #: Tokens charged against the TPM limit, over all attempts.
    tokens_charged: int = 0
    #: For succeeded requests: our estimate vs. what the API's `usage` reported.
    estimated_tokens_succeeded: int = 0
    reported_prompt_tokens: int = 0
    reported_total_tokens: int = 0
    #: Requests that had been read but had no final result when the run stopped early.
    unfinished: int = 0
    #: Requests skipped because the results file already had their final row (a resumed run).
    already_done: int = 0
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
    meter: RateMeter = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.meter = RateMeter(clock=self.clock)

    @property
    def done(self) -> int:
        return self.succeeded + self.failed + self.invalid

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else self.clock()
        return max(end - self.started_at, 1e-9)

    def record_attempt(self, tokens: int, *, is_retry: bool) -> None:
        self.attempts += 1
        self.retries += is_retry
        self.tokens_charged += tokens
        self.meter.record(tokens)

    def record_result(self, result: RequestResult) -> None:
        """Count a result the consumer has taken (so one that could not be written is not counted)."""
        if result.kind is ResultKind.SUCCEEDED:
            self.succeeded += 1
            if result.response is not None:
                self.record_usage(result.estimated_tokens, result.response)
        elif result.kind is ResultKind.INVALID:
            self.invalid += 1
        else:
            self.failed += 1

    def record_usage(self, estimated_tokens: int, response: dict[str, Any]) -> None:
        usage = response.get("usage")
        self.estimated_tokens_succeeded += estimated_tokens
        if isinstance(usage, dict):
            prompt = usage.get("prompt_tokens", usage.get("input_tokens", 0))
            total = usage.get("total_tokens", 0)
            self.reported_prompt_tokens += prompt if isinstance(prompt, int) else 0
            self.reported_total_tokens += total if isinstance(total, int) else 0


class ProgressDisplay:
    """A tqdm bar (requests done/total, current RPM and TPM, 429s), or nothing when disabled."""

    def __init__(self, stats: RunStats, *, enabled: bool, stream: TextIO | None = None) -> None:
        self._stats = stats
        self._bar: Any = None
        if enabled:
            from tqdm import tqdm

            stream = stream if stream is not None else sys.stderr
            self._bar = tqdm(total=stats.total, unit="req", file=stream, dynamic_ncols=True, smoothing=0.1)

    def update(self) -> None:
        if self._bar is None:
            return
        rpm, tpm = self._stats.meter.per_minute()
        self._bar.set_postfix_str(f"{rpm:,.0f} RPM, {tpm:,.0f} TPM, 429s {self._stats.rate_limit_errors}", refresh=False)
        self._bar.update(self._stats.already_done + self._stats.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self.update()
            self._bar.close()


def format_summary(stats: RunStats, *, save_path: str | None = None) -> str:
    """The end-of-run report: what happened, how fast against the limits, and where the results are."""
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
        lines.append(f"    not finished   {not_done} ({stats.unfinished:,} had been started); rerun to send them")
    lines.append(f"  attempts         {stats.attempts:,} ({stats.retries:,} retries, {stats.rate_limit_errors:,} rate-limit 429s)")
    lines.append(f"  elapsed          {format_duration(stats.elapsed)}")
    lines.append(f"  throughput       {rpm:,.0f} requests/min{_of_limit(rpm, stats.limits.requests_per_minute)}")
    lines.append(f"                   {tpm:,.0f} tokens/min{_of_limit(tpm, stats.limits.tokens_per_minute)}")
    if stats.succeeded:
        lines.append(
            f"  tokens           estimated {stats.estimated_tokens_succeeded:,} (prompt + completion budget); "
            f"reported by the API {stats.reported_total_tokens:,} ({stats.reported_prompt_tokens:,} prompt)"
        )
    if abs(stats.server_token_ratio - 1) >= 0.02:
        lines.append(f"                   the API's rate limiter charged about {stats.server_token_ratio:.2f}x our estimates (paced to match)")
    lines.extend(_control_lines(stats, minutes))
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


def _round_figure(value: float) -> float:
    """Three significant figures: a measured limit is not known to the request."""
    if value <= 0 or not math.isfinite(value):
        return value
    return float(f"{value:.3g}")


def _of_limit(value: float, limit: float | None) -> str:
    if limit is None:
        return " (limit not known: the API sent no x-ratelimit headers)"
    if math.isinf(limit):
        return " (no limit set)"
    return f" ({value / limit:.0%} of the {limit:,.0f} limit)"


def format_duration(seconds: float) -> str:
    """1.5s, 12m05s, 3h04m10s."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
