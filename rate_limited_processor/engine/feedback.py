"""What the run learns from each answer: the lane's limits from its headers, its rate control, and the pauses after
429s, carried to the lane's limiter through one guarded call.

Usage (an attempt, once its answer is classified)::

    if not await feedback.learn(job, lane, outcome, decision, now):   # False: the limiter failed, the run stops
        ...
    await feedback.pause_everyone(job, lane, pause)                   # after a rate-limit 429

A limiter that raises (Redis gone, say) fails the run: nothing can be sent within the limits any more.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from ..core.learned_limits import NO_REPORT, SendMark, parse_rate_limit_headers, states_rate_limits
from ..core.limiter import Limits, RateLimiter
from ..core.rate_control import Answer
from ..core.retry_policy import Decision, HTTPOutcome, Verdict
from .context import RunContext
from .job import Job
from .lanes import Lane

__all__ = ["Feedback"]

logger = logging.getLogger("rate_limited_processor")

_SUCCESS = Verdict.SUCCESS


class Feedback:
    """Moves each lane's tuner, control and limiter to what the answers through it say."""

    __slots__ = ("_run",)

    def __init__(self, run: RunContext) -> None:
        self._run = run

    async def learn(self, job: Job, lane: Lane, outcome: HTTPOutcome, decision: Decision, now: float) -> bool:
        """Let the lane's tuner and control learn from this answer (which came at `now`), and move its limiter to
        what they ask. False if the limiter failed."""
        headers = outcome.headers
        report = parse_rate_limit_headers(headers, now=self._run.clock.wall()) if states_rate_limits(headers) else NO_REPORT
        mark = job.mark
        refused = decision.verdict is not _SUCCESS and mark is not None
        used = 0
        if refused:
            assert mark is not None
            # The server charges only what it admits: a refused request is not part of what was spent,
            # and produced no output.
            mark = SendMark(mark.sent_at, mark.requests - 1, mark.tokens - job.tokens)
        elif job.output_tokens:
            # The reservation was the request's ceiling (max_tokens); the answer says what it used.
            used = _output_tokens_used(outcome.body, job.output_tokens)
        unused = job.output_tokens - used
        if (refused or unused > 0) and not await self._limiter(lambda: _give_back(lane.limiter, refused, job.tokens, unused)):
            return False
        from_the_api = outcome.status is not None and outcome.status < 500
        if mark is not None:
            lane.tuner.observe(mark, report, from_the_api=from_the_api)
            # No capacity (Flex) says nothing about the rate limiter: like no answer, it moves no rate.
            if from_the_api and not decision.no_capacity:
                answer = Answer(
                    mark.sent_at, job.tokens, decision.rate_limited, decision.on_tokens, decision.on_output_tokens, used,
                    explained=decision.rate_limited and report.exhausted,
                )
                lane.control.answered(answer, now)
            else:  # a 5xx, no answer or no capacity says nothing about the server's rate limiter
                lane.control.lost(mark.sent_at)
        return await self.retune(lane, now)

    async def retune(self, lane: Lane, now: float) -> bool:
        """The lane's limiter at the limits its tuner and rate control give now (unchanged when within 1%)."""
        limits = lane.control.limits(lane.tuner.limits(), now)
        if _close(limits, lane.applied):
            return True
        self._run.show_limits()
        logger.debug("%s: sending at %s (server-side ratios %.2f requests, %.2f tokens)", lane.name, limits, lane.tuner.requests.ratio, lane.tuner.tokens.ratio)
        return await self.apply_limits(lane, limits)

    async def pause_everyone(self, job: Job, lane: Lane, pause: float) -> bool:
        """After a rate-limit 429, nobody sends through that lane until the pause has passed. False if the
        limiter failed."""
        logger.debug("%s: rate limited; all sending through %s paused for %.3fs", job.request.name, lane.name, pause)
        now = self._run.now()
        lane.control.paused(now, now + pause)
        return await self._limiter(lambda: lane.limiter.pause(pause))

    async def apply_limits(self, lane: Lane, limits: Limits) -> bool:
        """Move a lane's limiter to these limits. False (and the run stops) if the limiter failed."""
        lane.applied = limits
        return await self._limiter(lambda: lane.limiter.set_limits(limits))

    async def _limiter(self, call: Callable[[], Awaitable[Any]]) -> bool:
        """The one guarded call to a limiter: False, and the run stops, if it raised."""
        try:
            await call()
        except Exception as error:
            self._run.limiter_failed(error)
            return False
        return True


async def _give_back(limiter: RateLimiter, refused: bool, tokens: int, unused_output_tokens: int) -> None:
    """What an attempt did not spend: all its `tokens` when the server refused it, and the output it reserved but
    did not use."""
    if refused:
        await limiter.refused(tokens)
    if unused_output_tokens > 0:
        await limiter.refund(unused_output_tokens)


def _close(a: Limits, b: Limits, tolerance: float = 0.01) -> bool:
    """Limits within 1% of each other: not worth rebuilding the buckets for. (Unlimited is close only to itself.)"""
    if a is b:
        return True
    if a.output_burst != b.output_burst:
        return False
    pairs = (
        (a.requests_per_minute, b.requests_per_minute),
        (a.tokens_per_minute, b.tokens_per_minute),
        (a.output_tokens_per_minute, b.output_tokens_per_minute),
    )
    return all(x == y or (x is not None and y is not None and math.isfinite(x) and math.isfinite(y) and abs(x - y) <= tolerance * max(x, y)) for x, y in pairs)


def _output_tokens_used(body: Any, reserved: int) -> int:
    """What an answer says it used of its output reservation (Anthropic's usage.output_tokens); the whole
    reservation when it does not say."""
    usage = body.get("usage") if isinstance(body, dict) else None
    used = usage.get("output_tokens") if isinstance(usage, dict) else None
    if isinstance(used, int) and not isinstance(used, bool) and used >= 0:
        return min(used, reserved)
    return reserved
