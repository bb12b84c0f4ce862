"""The plan of `--mode auto --deadline`: every line done by the deadline, at the least cost.

Lines go through the Batch API (half price) while the online capacity could still finish what the batches have
not: the rescue. At the rescue the running batches are cancelled (what they finished is kept); the lines in no
running batch (never sent, or waiting for enqueued-token room) go online at once, and a cancelled batch's lines
once its cancel has ended. So the rescue takes the online time of all the unfinished lines at the limits, or, when
longer, the time a cancel is allowed plus the online time of the lines in batches; it must start by `deadline -
that - margin`. When even all-online cannot end before the deadline at the start, no batch is tried. With the
limits unknown (a real run learns them first), the plan says so and plans batches when the deadline allows any.

Usage::

    capacity = OnlineCapacity(requests_per_minute=1_200, tokens_per_minute=None)
    work = Work(lines=400, tokens=24_000)
    rescue = rescue_at(now=0.0, deadline=60.0, capacity=capacity, work=work)   # 60 - 5 s cancel - 20 s online - 3 s
    if decide(now, 60.0, capacity, work) is Decision.RESCUE: ...

Pure: every function takes `now` (or a deadline) and reads no clock, so the plan is tested in virtual time.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .costs import format_dollars
from .limiter import Limits

__all__ = [
    "OnlineCapacity", "Work", "Decision", "Route", "Estimate", "Outcome", "margin_seconds", "cancel_seconds", "rescue_seconds", "rescue_at",
    "decide", "estimate",
    "format_estimate", "format_outcome", "MIN_MARGIN_SECONDS", "MARGIN_FRACTION", "CANCEL_FRACTION", "MIN_CANCEL_SECONDS", "MAX_CANCEL_SECONDS",
]

#: The least margin kept between the rescue's expected end and the deadline: the last answers' latency, a retry.
MIN_MARGIN_SECONDS = 3.0
#: And a tenth of the rescue's online time: the limits are reached only on average.
MARGIN_FRACTION = 0.1
#: Time allowed for cancelled batches to end "cancelled" (OpenAI: "up to 10 minutes") and their output to be
#: downloaded: a twentieth of the time left, at least `MIN_CANCEL_SECONDS`, at most `MAX_CANCEL_SECONDS`. Only the
#: lines in those batches wait for it: the others go online meanwhile.
CANCEL_FRACTION = 0.05
MIN_CANCEL_SECONDS = 5.0
MAX_CANCEL_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class OnlineCapacity:
    """The account's online limits (given, or learned from its headers); None where there is no limit."""

    requests_per_minute: float | None
    tokens_per_minute: float | None
    #: The fraction of the limits the run aims at (`--headroom`).
    headroom: float = 1.0
    #: A limit on output tokens apart (Anthropic's OTPM), which the online run charges each request's budget.
    output_tokens_per_minute: float | None = None

    @classmethod
    def of(cls, limits: Limits, headroom: float = 1.0) -> OnlineCapacity:
        """The capacity of a run at these limits (given, or stated), aiming at `headroom` of them."""
        return cls(limits.requests_per_minute, limits.tokens_per_minute, headroom, limits.output_tokens_per_minute)

    @property
    def known(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None or self.output_tokens_per_minute is not None

    def seconds_for(self, work: Work) -> float:
        """Seconds the work takes online at the limits, the tightest of them (0 for no work; infinite when no limit
        is known)."""
        if work.lines == 0:
            return 0.0
        if not self.known:
            return math.inf
        by_requests = 60.0 * work.lines / self.requests_per_minute if self.requests_per_minute else 0.0
        by_tokens = 60.0 * work.tokens / self.tokens_per_minute if self.tokens_per_minute else 0.0
        by_output = 60.0 * work.output_tokens / self.output_tokens_per_minute if self.output_tokens_per_minute else 0.0
        return max(by_requests, by_tokens, by_output) / self.headroom


@dataclass(frozen=True, slots=True)
class Work:
    """Lines still without a row, and their estimated tokens as the token limit counts them (OpenAI's: prompts and
    completion budgets; Anthropic's: prompts) and their completion budgets (`output_tokens`, for a limit on output
    apart); of them, the lines in no running batch (`free_lines`, `free_tokens`, `free_output_tokens`), which the
    rescue sends online at once (the rest wait for their batch's cancel to end). By default every line is in a
    batch, as once they are all sent."""

    lines: int
    tokens: int
    free_lines: int = 0
    free_tokens: int = 0
    output_tokens: int = 0
    free_output_tokens: int = 0

    @property
    def in_batches(self) -> Work:
        """The lines that go online only once their batch's cancel has ended."""
        return Work(self.lines - self.free_lines, self.tokens - self.free_tokens, output_tokens=self.output_tokens - self.free_output_tokens)


class Decision(enum.Enum):
    #: The batches may go on: the online capacity can still finish what they have not, before the deadline.
    WAIT = "wait"
    #: Now or never: cancel the batches, keep what they finished, and send the rest online.
    RESCUE = "rescue"


class Route(enum.Enum):
    #: Through batches, with the online rescue behind them.
    BATCH = "batch"
    #: All online from the start: the deadline leaves no time to try a batch.
    ONLINE = "online"


def margin_seconds(online_seconds: float) -> float:
    """The time kept between the rescue's expected end and the deadline: a tenth of the online time (at least
    `MIN_MARGIN_SECONDS`)."""
    return max(MIN_MARGIN_SECONDS, MARGIN_FRACTION * online_seconds)


def cancel_seconds(seconds_left: float) -> float:
    """The time allowed for cancelled batches to end, `seconds_left` before the deadline."""
    return min(MAX_CANCEL_SECONDS, max(MIN_CANCEL_SECONDS, CANCEL_FRACTION * seconds_left))


def rescue_seconds(capacity: OnlineCapacity, work: Work, cancel: float) -> float:
    """How long the rescue of `work` takes, margin included: the lines in no batch go online at once, those in
    batches once the cancel (`cancel` seconds allowed) has ended, all through the same limits; so the online time of
    all the lines, or, when longer, the cancel and the online time of the lines in batches."""
    online = capacity.seconds_for(work)
    behind = work.in_batches
    waited = cancel + capacity.seconds_for(behind) if behind.lines > 0 else 0.0
    return max(online, waited) + margin_seconds(online)


def rescue_at(now: float, deadline: float, capacity: OnlineCapacity, work: Work, cancel: float | None = None) -> float:
    """The latest time the rescue of `work` may start and still end before the deadline, as seen at `now` (-inf:
    never possible). `cancel`: the seconds allowed for a cancel, fixed when the plan began (None: from the time
    left now; a run passes its own, else the allowance would shrink to its floor as the rescue nears)."""
    allowance = cancel_seconds(deadline - now) if cancel is None else cancel
    return deadline - rescue_seconds(capacity, work, allowance)


def decide(now: float, deadline: float, capacity: OnlineCapacity, work: Work, cancel: float | None = None) -> Decision:
    """Whether the unfinished `work` must go online now."""
    if work.lines == 0:
        return Decision.WAIT
    return Decision.RESCUE if now >= rescue_at(now, deadline, capacity, work, cancel) else Decision.WAIT


@dataclass(frozen=True, slots=True)
class Estimate:
    """What the plan expects, before anything is sent."""

    work: Work
    #: Seconds until the deadline, and the online time of all the work at the limits (inf: no limit known).
    seconds_left: float
    online_seconds: float
    #: Seconds from now until the rescue must start, were no batch to finish anything (nan: the limits are unknown).
    rescue_in: float
    route: Route
    #: All the work at batch prices, and online (None: no price known for a model).
    batch_dollars: float | None
    online_dollars: float | None


def estimate(
    now: float, deadline: float, capacity: OnlineCapacity, work: Work, batch_dollars: float | None, online_dollars: float | None,
) -> Estimate:
    """The plan for `work` at `now`: batches with the rescue behind them, or, with no time for a batch, all online.
    With the limits unknown, batches when the deadline leaves time for a batch's cancel at all (the rescue time is
    set once the limits are known)."""
    online = capacity.seconds_for(work)
    if capacity.known:
        rescue = rescue_at(now, deadline, capacity, work) - now
    else:
        rescue = math.nan if deadline - now > cancel_seconds(deadline - now) + MIN_MARGIN_SECONDS else -math.inf
    route = Route.BATCH if rescue > 0 or math.isnan(rescue) or work.lines == 0 else Route.ONLINE
    return Estimate(work, deadline - now, online, rescue, route, batch_dollars, online_dollars)


def format_estimate(plan: Estimate) -> str:
    """The estimate in plain words, for the log and the dry run."""
    work = plan.work
    unknown = math.isinf(plan.online_seconds)
    online = "unknown" if unknown else f"{plan.online_seconds:,.0f} s"
    lines = [
        f"deadline in {plan.seconds_left:,.0f} s for {work.lines:,} lines (~{work.tokens:,} tokens); all online at the limits: {online}",
        f"cost: {_dollars(plan.batch_dollars)} through batches, {_dollars(plan.online_dollars)} all online",
    ]
    if unknown and work.lines:
        lines.append(
            "limits unknown: a real run learns them from one request's headers first, then plans when the rescue starts "
            "(if the API states none, every line goes online; give --max_requests_per_minute to plan it here)"
        )
        way = "every line through batches, the rescue behind them" if plan.route is Route.BATCH else "all online: the deadline leaves no time for a batch"
        lines.append(f"plan: {way}")
    elif plan.route is Route.ONLINE:
        late = "" if plan.online_seconds <= plan.seconds_left else " (even so, the deadline cannot be met at the limits)"
        lines.append(f"plan: all online now: the deadline leaves no time to try a batch{late}")
    elif work.lines:
        lines.append(
            f"plan: every line through batches; what they have not finished {plan.rescue_in:,.0f} s from now (later as they "
            "finish lines) is cancelled and sent online"
        )
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How the lines went: through batches or online, and what they cost (None: no price known)."""

    batched: int
    batch_dollars: float | None
    online: int
    online_dollars: float | None
    #: The same lines all online, at online prices.
    all_online_dollars: float | None
    cancels: int
    #: Seconds the last row came after the deadline (0: on time); the plan's margin is an estimate, not a promise.
    late_seconds: float = 0.0


def format_outcome(outcome: Outcome) -> str:
    """The summary's lines for the plan: each way's lines and cost, and the saving against all-online."""
    text = (
        f"deadline plan: {outcome.batched:,} lines through batches ({_dollars(outcome.batch_dollars)}), "
        f"{outcome.online:,} online ({_dollars(outcome.online_dollars)}); {outcome.cancels} batch cancel(s)"
    )
    spent = None if outcome.batch_dollars is None or outcome.online_dollars is None else outcome.batch_dollars + outcome.online_dollars
    if spent is not None and outcome.all_online_dollars is not None:
        text += f"; saved {format_dollars(outcome.all_online_dollars - spent)} against all online ({format_dollars(outcome.all_online_dollars)})"
    if outcome.late_seconds > 0:
        text += f"; LATE: the last row came {outcome.late_seconds:,.1f} s after the deadline"
    return text


def _dollars(value: float | None) -> str:
    return "an unknown cost (no price for the model)" if value is None else format_dollars(value)
