"""Where each request goes: an account, and that account's buckets for the request's model (a "lane").

Usage::

    lanes = Lanes(settings, make_limiter=lambda account, model, limits: InProcessLimiter(limits), clock=clock)
    lane = lanes.choose(model="gpt-4o-mini", tokens=120)   # the account that can take it soonest
    await lane.limiter.acquire(120)
    ...
    lanes.drop(lane.account.name)                            # its key was refused: the others carry on

Rate limits live per organisation (or key) and per model, so that is where the buckets are: one lane per
(account, model), each with its own limiter (in process, or a key of its own in Redis), its own ceiling
learned from its own headers (`LimitTuner`) and its own closed-loop control (`RateController`). The run is
one loop over all of them: accounts, models and providers are lanes over the one `RateLimiter` interface,
not copies of the loop.

A request goes to the account whose lane for its model can take it soonest: the one its limiter would admit
it first (`InProcessLimiter.wait_time`), a lane still waiting for its first answer counting as later than
any other; where a limiter cannot say (Redis), the lane with the fewest requests in flight per unit of its
rate. An account whose key is refused, or whose quota is gone, is dropped, and the run stops only when no
account is left.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from ..base.clock import Clock
from ..config.credentials import Headers, headers_for
from ..config.settings import Account, Settings
from ..core.learned_limits import LimitTuner
from ..core.limiter import Limits, RateLimiter
from ..core.rate_control import ControlReport, RateController
from ..core.stats import LaneReport
from ..providers.registry import provider_for

__all__ = ["Lane", "LaneReport", "Lanes", "LimiterFactory"]

#: Makes the limiter of a new lane, given its account, its model and its first limits.
LimiterFactory = Callable[[Account, str, Limits], RateLimiter]


@dataclass(slots=True)
class Lane:
    """One account's buckets for one model: its limiter, its ceiling, its control, and its headers."""

    account: Account
    model: str
    limiter: RateLimiter
    tuner: LimitTuner
    control: RateController
    #: What the limiter was last told to send at.
    applied: Limits
    #: The account's key where the API looks for it, and its headers: never shown in a repr.
    headers: Headers = field(repr=False)
    #: It has been chosen once (its limiter set up).
    started: bool = False
    in_flight: int = 0
    sent: int = 0
    succeeded: int = 0
    rate_limited: int = 0

    @property
    def name(self) -> str:
        return f"{self.account.name}/{self.model}" if self.model else self.account.name

    def probing(self, now: float) -> bool:
        """Its first request is out and no answer has come: the next one waits (it would learn nothing), unless
        that answer is overdue (`FIRST_ANSWER_PATIENCE`): then the others start, slowly, on the clock."""
        return self.tuner.awaiting_first_answer and self.in_flight > 0 and not self.first_answer_overdue(now)

    def first_answer_overdue(self, now: float) -> bool:
        """No answer has told the limits, nor a latency, `FIRST_ANSWER_PATIENCE` seconds after the first send."""
        return (at := self.control.first_answer_overdue_at()) is not None and now >= at

    def may_take_one_more(self, now: float, *, anything_in_flight: bool) -> bool:
        """Not while its first request awaits the answer that tells its limits, nor beyond its window of requests in
        flight; but always when nothing at all is in flight."""
        return not (self.probing(now) or self.in_flight >= self.control.window(now)) or not anything_in_flight

    def sending(self, now: float) -> None:
        """A request was admitted by its limiter at `now` and goes out through this lane."""
        self.in_flight += 1
        self.sent += 1
        self.control.sent(now)

    def answered(self, *, succeeded: bool, rate_limited: bool) -> None:
        """An attempt through this lane ended: how it went, for the summary."""
        self.succeeded += succeeded
        self.rate_limited += rate_limited

    def ended(self) -> None:
        """An attempt through this lane is over (answered, failed, or abandoned)."""
        self.in_flight -= 1

    def report(self) -> LaneReport:
        learned = Limits(self.tuner.requests.learned, self.tuner.tokens.learned, output_tokens_per_minute=self.tuner.output_tokens.learned)
        return LaneReport(self.account.name, self.model, self.sent, self.succeeded, self.rate_limited, learned, self.control.report().found_requests_per_minute)


class Lanes:
    """Every (account, model) lane of a run, made on first use, and the choice of lane for each request."""

    __slots__ = ("_settings", "_make_limiter", "_clock", "_accounts", "_lanes", "_dropped")

    def __init__(self, settings: Settings, *, make_limiter: LimiterFactory, clock: Clock) -> None:
        self._settings = settings
        self._make_limiter = make_limiter
        self._clock = clock
        #: The accounts still in use, in the order given.
        self._accounts: list[Account] = list(settings.accounts) or [
            Account("default", api_key=settings.key, headers=settings.extra_headers, limits=settings.limits)
        ]
        self._lanes: dict[tuple[str, str], Lane] = {}
        #: Accounts taken out, and why.
        self._dropped: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"Lanes({len(self._lanes)} lanes, accounts {[account.name for account in self._accounts]}, dropped {list(self._dropped)})"

    @property
    def accounts_left(self) -> int:
        return len(self._accounts)

    @property
    def dropped(self) -> dict[str, str]:
        """The accounts taken out, and why."""
        return dict(self._dropped)

    def is_dropped(self, account_name: str) -> bool:
        return account_name in self._dropped

    def all(self) -> list[Lane]:
        return list(self._lanes.values())

    def lane(self, account: Account, model: str) -> Lane:
        """The lane of this account for this model, made on first use."""
        key = (account.name, model)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = self._new_lane(account, model)
        return lane

    def choose(self, model: str, tokens: int, output_tokens: int = 0) -> Lane:
        """The lane, among the accounts left, that can take a request of `tokens` for `model` soonest."""
        if not self._accounts:
            raise RuntimeError("no account is left")
        if len(self._accounts) == 1:
            return self.lane(self._accounts[0], model)
        candidates = [self.lane(account, model) for account in self._accounts]
        return min(candidates, key=lambda lane: self._soonest(lane, tokens, output_tokens))

    def drop(self, account_name: str, reason: str) -> None:
        """Take an account out (its key was refused, its quota is gone): its lanes get nothing more."""
        self._accounts = [account for account in self._accounts if account.name != account_name]
        self._dropped.setdefault(account_name, reason)

    def reports(self) -> list[LaneReport]:
        return [lane.report() for lane in self._lanes.values()]

    def pace(self) -> tuple[Limits, float | None] | None:
        """The limits the display and the summary hold the run's pace against, and how the servers' token counts
        compare with our estimates (None: not known). Its one lane's limits as the server states them, or those
        of every lane of an account still in use added up, and the ratio weighted by what each lane has sent.
        None when no lane was made: the limits given stand."""
        lanes = self.all()
        if not lanes:
            return None
        if len(lanes) == 1:
            return lanes[0].tuner.server_limits(), lanes[0].tuner.tokens.ratio
        in_use = [lane for lane in lanes if not self.is_dropped(lane.account.name)] or lanes
        sent = sum(lane.sent for lane in lanes)
        ratio = sum(lane.tuner.tokens.ratio * lane.sent for lane in lanes) / sent if sent else None
        return _combined([lane.tuner.server_limits() for lane in in_use]), ratio

    def end_report(self, now: float) -> tuple[ControlReport | None, float | None]:
        """At the run's end: what the rate control found (one lane only), and the requests in flight the limits in
        force needed at the latency seen, over all lanes (None when no lane was made)."""
        lanes = self.all()
        control = lanes[0].control.report() if len(lanes) == 1 else None
        needed = sum(lane.control.needed_in_flight(now) for lane in lanes) if lanes else None
        return control, needed

    def _soonest(self, lane: Lane, tokens: int, output_tokens: int) -> tuple[float, float]:
        """When the lane could take the request: its limiter's own wait where it can tell, then a tie-break
        by load (requests in flight per request per second of its rate)."""
        if lane.probing(self._clock.now()):
            return (math.inf, lane.in_flight)
        wait_time = getattr(lane.limiter, "wait_time", None)
        wait = wait_time(tokens, output_tokens) if callable(wait_time) else 0.0
        rate = lane.applied.requests_per_minute
        per_second = rate / 60 if rate is not None and math.isfinite(rate) and rate > 0 else 1.0
        return (float(wait), (lane.in_flight + 1) / per_second)

    def _new_lane(self, account: Account, model: str) -> Lane:
        settings = self._settings
        # A limit given for the run caps every account's too; the account's own, where given, is lower or equal.
        given = settings.limits.lower(account.limits)
        output_limit = provider_for(settings.request_url).limits_output_tokens
        tuner = LimitTuner(given, headroom=settings.headroom, output_limit=output_limit)
        now = self._clock.now()
        control = RateController(requests_ceiling_known=given.requests_per_minute is not None, now=now)
        applied = control.limits(tuner.limits(), now)
        limiter = self._make_limiter(account, model, applied)
        headers = headers_for(settings.request_url, account.key, {**settings.extra_headers, **account.headers})
        return Lane(account, model, limiter, tuner, control, applied, headers)


def _combined(limits: list[Limits]) -> Limits:
    """The lanes' limits added up: what the run could send at in all (None where a lane's is not known)."""

    def total(values: list[float | None]) -> float | None:
        return None if any(value is None for value in values) else sum(value for value in values if value is not None)

    return Limits(
        total([each.requests_per_minute for each in limits]),
        total([each.tokens_per_minute for each in limits]),
        output_tokens_per_minute=total([each.output_tokens_per_minute for each in limits]),
    )
