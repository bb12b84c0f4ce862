"""`--max_requests_per_day`, `--max_tokens_per_day`: a run never sends a request that would take the day's spend
past a daily limit; a daily quota (Gemini's requests per day, a team's own cap) is kept by the tool, not met as 429s.

Usage (the engine's `DailyGate` asks before each send; the file job keeps `record()` beside the results)::

    daily = DailyLimit(requests=300, tokens=None)
    daily.restore(record_from_the_day_file)       # what earlier runs of the same output spent today
    if daily.fits(tokens, wall):                  # else: stop the run, naming the limit and its reset
        daily.spend(tokens, wall)

A day is a UTC calendar day: the spend starts again at 00:00 UTC (`resets_at`). Tokens are those a request is
charged when sent (its prompt and its completion budget, as the per-minute limiter counts them), so the count is
an upper bound on what the API bills. Retries count: each is a request the API receives.
Pure: epoch seconds (`wall`) in, decisions out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

__all__ = ["DailyLimit", "SharedDaySpend", "day_of", "resets_at"]

_SECONDS_PER_DAY = 86_400


def day_of(wall: float) -> str:
    """The UTC calendar day `wall` (epoch seconds) falls on, as "YYYY-MM-DD"."""
    return datetime.fromtimestamp(wall, UTC).date().isoformat()


def resets_at(wall: float) -> float:
    """Epoch seconds of the next 00:00 UTC after `wall`: when a daily limit's count starts again."""
    return float((int(wall) // _SECONDS_PER_DAY + 1) * _SECONDS_PER_DAY)


class SharedDaySpend(Protocol):
    """A day's spend kept where several processes count it (Redis, `engine/shared_day.py`)."""

    async def take(self, day: str, tokens: int, requests_limit: int | None, tokens_limit: int | None) -> tuple[bool, int, int]:
        """Count one request charged `tokens` in `day` if it passes neither limit: (counted, requests, tokens), the
        totals after it if counted, else as they stand."""
        ...


@dataclass(slots=True)
class DailyLimit:
    """The requests and tokens a UTC day may spend (None: no limit of that kind), and what `day` has spent so far."""

    requests: int | None
    tokens: int | None
    #: The UTC day the counts below are of ("" before the first reading).
    day: str = ""
    spent_requests: int = 0
    spent_tokens: int = 0

    def __post_init__(self) -> None:
        for name, limit in (("max_requests_per_day", self.requests), ("max_tokens_per_day", self.tokens)):
            if limit is not None and limit < 1:
                raise ValueError(f"{name} must be a positive whole number, got {limit}")

    def _roll(self, wall: float) -> None:
        """A new day starts with nothing spent."""
        today = day_of(wall)
        if today != self.day:
            self.day, self.spent_requests, self.spent_tokens = today, 0, 0

    def fits(self, tokens: int, wall: float) -> bool:
        """Whether one more request charged `tokens` may be sent at `wall` without passing a daily limit."""
        self._roll(wall)
        return self._over(tokens) is None

    def spend(self, tokens: int, wall: float) -> None:
        """A request charged `tokens` was sent at `wall`."""
        self._roll(wall)
        self.spent_requests += 1
        self.spent_tokens += tokens

    def adopt(self, day: str, requests: int, tokens: int) -> None:
        """Take the day's totals as a shared count states them (every process's spend, this one's included)."""
        self.day, self.spent_requests, self.spent_tokens = day, requests, tokens

    def _over(self, tokens: int) -> str | None:
        """The flag of the first daily limit one more request charged `tokens` would pass, if any."""
        if self.requests is not None and self.spent_requests + 1 > self.requests:
            return "--max_requests_per_day"
        if self.tokens is not None and self.spent_tokens + tokens > self.tokens:
            return "--max_tokens_per_day"
        return None

    def stop_reason(self, tokens: int, wall: float) -> str:
        """Why the run stops: which daily limit the next request (charged `tokens`) would pass, and when it resets."""
        self._roll(wall)
        flag = self._over(tokens) or "a daily limit"
        limit = self.requests if flag == "--max_requests_per_day" else self.tokens
        reset = datetime.fromtimestamp(resets_at(wall), UTC)
        left = timedelta(seconds=round(reset.timestamp() - wall))
        spent = f"{self.spent_requests:,} requests and {self.spent_tokens:,} tokens"
        return (
            f"{flag} {limit:,} reached: {spent} sent on {self.day} (UTC) by the runs of this output; the daily limit resets at "
            f"{reset:%Y-%m-%d %H:%M} UTC (in {left}): rerun then to send the rest"
        )

    def record(self) -> dict[str, Any]:
        """What is kept beside the results: the day and its spend."""
        return {"day": self.day, "requests": self.spent_requests, "tokens": self.spent_tokens}

    def restore(self, record: Mapping[str, Any] | None) -> None:
        """Take up the spend an earlier run recorded (`record()`); a record of another day counts for nothing once
        the day is read."""
        if not record:
            return
        day, requests, tokens = record.get("day"), record.get("requests"), record.get("tokens")
        if isinstance(day, str) and isinstance(requests, int) and isinstance(tokens, int):
            self.day, self.spent_requests, self.spent_tokens = day, max(0, requests), max(0, tokens)
