"""Limits learned from the API: what its `x-ratelimit-*` headers say.

Pure logic, no I/O: the runner reports each response to a `LimitTuner`, whose limits are the ceiling the
rate controller (`rate_control`) sends under. Two things are learned:

1. **The limits themselves.** `x-ratelimit-limit-requests` / `-tokens` are adopted. When the user gave a
   limit too, the lower wins. An unknown limit starts conservatively: the first request goes alone,
   and the others wait for its answer, which normally carries the limits.
2. **How fast the account's budget is really being spent.** The server reports its view in
   `x-ratelimit-reset-*`: the time until its bucket would be full again, that is a deficit of
   `reset x rate` units. Between two of our requests, the server's consumption is the change in that
   deficit plus what refilled meanwhile; we know what we ourselves sent in between. Their ratio `k`
   (smoothed over a few seconds) is > 1 when another program spends the same account, or when the
   server counts tokens its own way (OpenAI's limiter counts characters, not tiktoken tokens). We
   then send at `limit / k`, in our own units, which is exactly the limit in the server's. This uses
   only `reset`, never `remaining`, so it does not depend on how large the server's bucket is. A pair
   of observations counts only if the server's bucket cannot have filled up between them (its deficit
   exceeded the refill); otherwise the server had slack, and `k` relaxes towards 1.
What the headers do not say (a gateway that sends none, a given limit that is wrong) is found from the
server's 429s by `rate_control`, below the ceiling this module computes. `--headroom` multiplies the
ceiling, to leave room for other traffic.

A stated limit that no account has (below one request or a hundred tokens a minute, zero, negative, not a
number) is ignored, with one warning per header: adopting it would stall the run in silence.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from ..providers.rate_limits import MIN_STATED_REQUESTS_PER_MINUTE, MIN_STATED_TOKENS_PER_MINUTE, NO_REPORT, RateLimitReport
from ..providers.registry import limit_floor, parse_rate_limit_headers, states_rate_limits
from .limiter import OUTPUT_BURST_SECONDS, Limits

#: The report and its parsers are the providers' (`providers.rate_limits`, `providers.registry`); re-exported here.
__all__ = [
    "NO_REPORT", "RateLimitReport", "SendMark", "LimitTuner", "parse_rate_limit_headers", "states_rate_limits",
    "MIN_STATED_REQUESTS_PER_MINUTE", "MIN_STATED_TOKENS_PER_MINUTE",
]

#: Seconds over which the server-consumption ratio is smoothed.
RATIO_TIME_CONSTANT = 3.0
#: Resets come in whole milliseconds: a deficit is known to about this many seconds of refill.
RESET_RESOLUTION = 0.002
#: The ratio is kept within these bounds: measurement noise must not stall or unleash the run.
MIN_RATIO, MAX_RATIO = 0.5, 20.0


@dataclass(slots=True)  # not frozen: one is made per request, and a frozen one costs a call per field
class SendMark:
    """When a request was sent, and what we had sent by then (this request included)."""

    sent_at: float
    requests: int
    tokens: int


class _Dimension:
    """One limit (requests or tokens): given, learned, and the server-consumption ratio."""

    __slots__ = ("given", "learned", "ratio", "_consumed", "_ours", "_reference")

    def __init__(self, given: float | None) -> None:
        self.given = given
        #: From the x-ratelimit-limit-* header.
        self.learned: float | None = None
        self.ratio = 1.0
        self._consumed = 0.0
        self._ours = 0.0
        self._reference: tuple[float, int, float] | None = None  # (sent_at, our total, server deficit)

    def base(self) -> float | None:
        """The limit in the server's units: the lower of the given and the learned one."""
        known = [value for value in (self.given, self.learned) if value is not None]
        return min(known) if known else None

    def observe(self, sent_at: float, our_total: int, limit: float | None, reset: float | None, resolution: float) -> None:
        if limit is not None:
            self.learned = limit
        # The server refills at its own limit, whatever lower one we were given: only it turns a reset
        # into a deficit. Without it, nothing can be measured.
        server_rate = self.learned / 60.0 if self.learned is not None else None
        if reset is None or server_rate is None:
            return
        deficit = reset * server_rate
        reference = self._reference
        if reference is not None and sent_at <= reference[0]:
            return  # an older request's view, overtaken by a newer one
        self._reference = (sent_at, our_total, deficit)
        if reference is None:
            return
        then, our_then, deficit_then = reference
        elapsed = sent_at - then
        refill = server_rate * elapsed
        decay = math.exp(-elapsed / RATIO_TIME_CONSTANT)
        self._consumed *= decay
        self._ours *= decay
        uncertain = server_rate * max(RESET_RESOLUTION, 2 * resolution)
        if deficit_then <= refill + uncertain or deficit <= uncertain:
            # The server's bucket may have filled up in between (or was full), and what it then did not
            # refill is invisible: no measurement. It had slack, though, so the ratio relaxes towards 1.
            self.ratio = 1.0 + (self.ratio - 1.0) * decay
            return
        if abs(deficit - deficit_then) > self.learned:  # type: ignore[operator]
            return  # more than a whole minute's limit between two of our requests: a garbled header
        self._consumed += deficit - deficit_then + refill
        self._ours += our_total - our_then
        if self._ours > 0 and self._consumed > 0:
            self.ratio = min(MAX_RATIO, max(MIN_RATIO, self._consumed / self._ours))


class LimitTuner:
    """Turns what the API's headers report into the ceiling to send under (in our own units)."""

    __slots__ = (
        "requests", "tokens", "output_tokens", "headroom", "burst_seconds", "_answered", "_warn", "_warned", "_output_limit", "_limits",
        "_output_held",
    )

    def __init__(
        self, given: Limits | None, *, headroom: float = 1.0, warn: Callable[[str], None] | None = None, output_limit: bool = False
    ) -> None:
        """`given` limits may have None fields: those are learned ("auto"). `warn` hears, once per header,
        that a stated limit was ignored (default: the package's logger). `output_limit`: the API also limits
        output tokens (Anthropic), so that limit too is waited for before the first answer."""
        if not 0 < headroom <= 1:
            raise ValueError(f"headroom must be in (0, 1], got {headroom}")
        given = given if given is not None else Limits(None, None)
        self.requests = _Dimension(given.requests_per_minute)
        self.tokens = _Dimension(given.tokens_per_minute)
        self.output_tokens = _Dimension(given.output_tokens_per_minute)
        self._output_limit = output_limit
        self.headroom = headroom
        self.burst_seconds = given.burst_seconds
        self._answered = False
        self._warn = warn if warn is not None else logging.getLogger("rate_limited_processor").warning
        self._warned: set[str] = set()
        #: `limits()` as last worked out: only a report with something in it changes them.
        self._limits: Limits | None = None
        #: The most output tokens the server has said it had left: its output bucket holds at least that.
        self._output_held = 0.0

    def __repr__(self) -> str:
        return f"LimitTuner({self.limits()}, ratios={self.requests.ratio:.2f}/{self.tokens.ratio:.2f})"

    @property
    def awaiting_first_answer(self) -> bool:
        """A limit is unknown and no answer has come yet: send nothing more until one does."""
        if self._answered:
            return False
        return self.requests.base() is None or self.tokens.base() is None or (self._output_limit and self.output_tokens.base() is None)

    def server_limits(self) -> Limits:
        """The account's limits as far as we know them, in the server's units (None: not known)."""
        return Limits(self.requests.base(), self.tokens.base(), burst_seconds=self.burst_seconds, output_tokens_per_minute=self.output_tokens.base())

    def limits(self) -> Limits:
        """The ceiling to send under now, in our units (math.inf where none is known)."""
        if self._limits is None:
            # No output-token limit known is no output bucket at all (most APIs have none).
            output = self._rate(self.output_tokens) if self.output_tokens.base() is not None else None
            self._limits = Limits(
                self._rate(self.requests), self._rate(self.tokens), burst_seconds=self.burst_seconds, output_tokens_per_minute=output,
                output_burst_seconds=self._output_burst(),
            )
        return self._limits

    def _output_burst(self) -> float | None:
        """Seconds of OTPM our output bucket holds: what the server's has been seen to hold (it may enforce its
        limit over one second, or fill up to a minute), never less than `burst_seconds`, never over a minute."""
        base = self.output_tokens.base()
        if base is None or not self._output_held:
            return None
        return min(OUTPUT_BURST_SECONDS, max(self.burst_seconds, self._output_held / (base / 60.0)))

    def _rate(self, dimension: _Dimension) -> float:
        base = dimension.base()
        if base is None:
            return math.inf
        return base * self.headroom / dimension.ratio

    def observe(self, mark: SendMark, report: RateLimitReport, *, from_the_api: bool = True) -> None:
        """An answer arrived: learn from its headers.

        `from_the_api` is False for no answer at all, or a gateway's 5xx: those do not end the wait for
        the first real answer, which is what tells the limits.
        """
        if from_the_api or not report.empty:
            self._answered = True
        for name, text in report.ignored:
            if name not in self._warned:
                self._warned.add(name)
                self._warn(f"ignoring the API's {name}: {text[:40]!r}, which is no account's limit (not a number, or below "
                           f"{limit_floor(name):g} a minute); the pace follows the other limits and any 429s")
        for name in report.unknown:
            if name not in self._warned:  # Azure's -1 or 0: it does not know; nothing to warn about
                self._warned.add(name)
                logging.getLogger("rate_limited_processor").debug("the API's %s says it does not know that limit (-1 or 0): none is learned from it", name)
        if report.remaining_output_tokens is not None and report.remaining_output_tokens > self._output_held:
            self._output_held = report.remaining_output_tokens
            self._limits = None
        if report.empty:
            return
        self._limits = None
        self.requests.observe(mark.sent_at, mark.requests, report.limit_requests, report.reset_requests, report.reset_resolution)
        self.tokens.observe(mark.sent_at, mark.tokens, report.limit_tokens, report.reset_tokens, report.reset_resolution)
        # Output tokens are refunded after the answer: a deficit measured at send time would mislead; the limit
        # alone is adopted.
        self.output_tokens.observe(mark.sent_at, 0, report.limit_output_tokens, None, report.reset_resolution)
