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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .limiter import OUTPUT_BURST_SECONDS, Limits
from .retry_policy import parse_duration

__all__ = ["NO_REPORT", "RateLimitReport", "SendMark", "LimitTuner", "parse_rate_limit_headers", "states_rate_limits"]

#: Seconds over which the server-consumption ratio is smoothed.
RATIO_TIME_CONSTANT = 3.0
#: Resets come in whole milliseconds: a deficit is known to about this many seconds of refill.
RESET_RESOLUTION = 0.002
#: The ratio is kept within these bounds: measurement noise must not stall or unleash the run.
MIN_RATIO, MAX_RATIO = 0.5, 20.0
#: Stated limits below these are no account's limits (a garbled header, or a server that lies): one
#: request per minute, a hundred tokens per minute. Adopting `x-ratelimit-limit-requests: 0.001` would
#: send one request every 17 hours, in silence; such a limit is ignored, with one warning.
MIN_STATED_REQUESTS_PER_MINUTE = 1.0
MIN_STATED_TOKENS_PER_MINUTE = 100.0
_LIMIT_HEADERS = (("x-ratelimit-limit-requests", MIN_STATED_REQUESTS_PER_MINUTE), ("x-ratelimit-limit-tokens", MIN_STATED_TOKENS_PER_MINUTE))
#: Every limit header read, with the least a real account's limit can be: OpenAI's, Azure's and Anthropic's.
_FLOORS = {
    **dict(_LIMIT_HEADERS),
    "anthropic-ratelimit-requests-limit": MIN_STATED_REQUESTS_PER_MINUTE,
    "anthropic-ratelimit-input-tokens-limit": MIN_STATED_TOKENS_PER_MINUTE,
    "anthropic-ratelimit-output-tokens-limit": MIN_STATED_TOKENS_PER_MINUTE,
}


@dataclass(frozen=True, slots=True)
class RateLimitReport:
    """The server's view, from one response's headers; None where a header was absent."""

    limit_requests: float | None = None
    limit_tokens: float | None = None
    reset_requests: float | None = None
    reset_tokens: float | None = None
    #: Anthropic's output-token limit (OTPM).
    limit_output_tokens: float | None = None
    #: How finely the resets are given: OpenAI's Go durations to the millisecond, Azure's bare seconds,
    #: Anthropic's RFC 3339 times to the second.
    reset_resolution: float = 0.001
    #: Limit headers that were present but ignored, as ("header", "value"): not a number, or below any real limit.
    ignored: tuple[tuple[str, str], ...] = ()
    #: A `remaining` header says 0 for a limit the same answer states: the server's bucket is empty at that limit,
    #: so a 429 that carries it is the bucket working, not a sign of a lower limit than stated.
    exhausted: bool = False
    #: Anthropic's output tokens left now: what the server's output bucket holds at least.
    remaining_output_tokens: float | None = None

    @property
    def empty(self) -> bool:
        return (
            self.limit_requests is None and self.limit_tokens is None and self.limit_output_tokens is None
            and self.reset_requests is None and self.reset_tokens is None
        )


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: float | None = None) -> RateLimitReport:
    """OpenAI's `x-ratelimit-*` headers (resets as Go durations, "12ms", "6m0s"), Azure's (bare seconds), or
    Anthropic's `anthropic-ratelimit-{requests,input-tokens,output-tokens}-*` (resets as RFC 3339 times,
    relative to `now`, epoch seconds, default the wall clock).

    A stated limit that is not a finite number at least `MIN_STATED_*` is left out, and listed in `ignored`.
    Headers with none of these report nothing; `states_rate_limits` says so at less cost (and before `now` is read).
    """
    ignored: list[tuple[str, str]] = []

    def limit(name: str) -> float | None:
        text = headers.get(name)
        value = _positive_number(text)
        if text is not None and (value is None or value < _FLOORS[name]):
            ignored.append((name, text))
            return None
        return value

    if any(name.startswith("anthropic-ratelimit-") for name in headers):
        at = time.time() if now is None else now
        return RateLimitReport(
            limit_requests=limit("anthropic-ratelimit-requests-limit"),
            limit_tokens=limit("anthropic-ratelimit-input-tokens-limit"),
            limit_output_tokens=limit("anthropic-ratelimit-output-tokens-limit"),
            reset_requests=_until(headers.get("anthropic-ratelimit-requests-reset"), at),
            reset_tokens=_until(headers.get("anthropic-ratelimit-input-tokens-reset"), at),
            reset_resolution=1.0,
            ignored=tuple(ignored),
            exhausted=_exhausted(headers, _ANTHROPIC_REMAINING),
            remaining_output_tokens=_positive_number(headers.get("anthropic-ratelimit-output-tokens-remaining")),
        )
    resets = [headers.get("x-ratelimit-reset-requests"), headers.get("x-ratelimit-reset-tokens")]
    bare_seconds = any(text is not None and _positive_number(text) is not None for text in resets)
    limits = [limit(name) for name, _ in _LIMIT_HEADERS]
    return RateLimitReport(
        limit_requests=limits[0],
        limit_tokens=limits[1],
        reset_requests=_duration(resets[0]),
        reset_tokens=_duration(resets[1]),
        reset_resolution=1.0 if bare_seconds else 0.001,
        ignored=tuple(ignored),
        exhausted=_exhausted(headers, _OPENAI_REMAINING),
    )


def states_rate_limits(headers: Mapping[str, str]) -> bool:
    """Whether the headers hold any that `parse_rate_limit_headers` reads (a gateway's, a mock's may hold none)."""
    return not _READ_HEADERS.isdisjoint(headers)


#: What an answer without a rate-limit header reports.
NO_REPORT = RateLimitReport()
_ANTHROPIC_HEADERS = tuple(f"anthropic-ratelimit-{name}" for name in (
    "requests-limit", "input-tokens-limit", "output-tokens-limit", "requests-reset", "input-tokens-reset",
))
#: (remaining, limit) header pairs: a remaining 0 beside a stated limit is an empty bucket.
_OPENAI_REMAINING = tuple((f"x-ratelimit-remaining-{name}", f"x-ratelimit-limit-{name}") for name in ("requests", "tokens"))
_ANTHROPIC_REMAINING = tuple(
    (f"anthropic-ratelimit-{name}-remaining", f"anthropic-ratelimit-{name}-limit") for name in ("requests", "input-tokens", "output-tokens")
)
_READ_HEADERS = frozenset((
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", *dict(_LIMIT_HEADERS), *_ANTHROPIC_HEADERS,
    *(remaining for remaining, _ in (*_OPENAI_REMAINING, *_ANTHROPIC_REMAINING)),
))


def _exhausted(headers: Mapping[str, str], pairs: tuple[tuple[str, str], ...]) -> bool:
    """Some limit is stated and its `remaining` is 0."""
    for remaining, limit in pairs:
        text = headers.get(remaining)
        if text is not None and text.strip() == "0" and _positive_number(headers.get(limit)) is not None:
            return True
    return False


def _until(text: str | None, now: float) -> float | None:
    """Seconds from `now` to an RFC 3339 time ("2026-12-01T10:00:05Z"); None when unreadable."""
    if not text:
        return None
    try:
        at = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, at.timestamp() - now)


def _positive_number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def _duration(text: str | None) -> float | None:
    return parse_duration(text.strip()) if text else None


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
                           f"{_FLOORS.get(name, 1):g} a minute); the pace follows the other limits and any 429s")
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
