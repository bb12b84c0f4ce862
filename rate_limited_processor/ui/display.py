"""The live display: the progress bar and its second line, and the status line printed without a bar.

The status line (`StatusDigest`) and the bar's text (`bar_postfix`, `waiting_note`) are pure: they take the
stats and `now`, so they are tested without running anything.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from ..core.limiter import Limits
from ..core.stats import RunStats
from .text import format_duration, plural

__all__ = ["ProgressDisplay", "StatusDigest", "WAITING_AFTER", "bar_postfix", "describe_pace", "eta_seconds", "waiting_note"]

#: Seconds without an answer after which the display says it is waiting, rather than look frozen; once answers
#: are seen to take longer (a reasoning model's 30 s), the spell must also outlast the slowest of them by half.
WAITING_AFTER = 5.0


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
            f"last {format_duration(span)}: {plural(mark.retries - last.retries, 'retry', 'retries')}, "
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
        (plural(stats.retries, "retry", "retries"), 2),
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
