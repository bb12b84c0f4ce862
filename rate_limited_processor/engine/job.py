"""A request on its way through the run: what it is charged, where it goes, and how each attempt went."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..base.models import APIRequest, AttemptTiming, RequestResult, RequestTimings, ResultKind
from ..core.decisions import JobState
from ..core.learned_limits import SendMark
from ..core.retry_policy import HTTPOutcome
from ..providers.endpoints import Endpoint
from ..transport.http import ReceiveTimings
from .lanes import Lane

__all__ = ["Job"]

# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_SUCCEEDED = ResultKind.SUCCEEDED


@dataclass(slots=True)
class Job:
    """A request on its way: where it goes, its place in the run, and what went wrong on each attempt."""

    request: APIRequest
    url: str
    #: What its answer must hold to be a success (`retry_policy.answer_problem`).
    endpoint: Endpoint
    #: What it is charged against the token limit, of which its prompt and its completion budget.
    tokens: int
    prompt_tokens: int
    completion_tokens: int
    position: int
    #: Whose buckets it goes through: the lane for its model (made on first use), per account.
    model: str = ""
    #: Output tokens it reserves (Anthropic's max_tokens), refunded to what its answer used.
    output_tokens: int = 0
    #: The lane of the current attempt.
    lane: Lane | None = None
    #: HTTP attempts made, rate-limit 429s included...
    attempts: int = 0
    #: ...of which this many used none of max_attempts: rate-limit and no-capacity 429s (only time, since the
    #: first of them), and refusals by an account that was then dropped.
    rate_limited: int = 0
    first_rate_limited_at: float | None = None
    #: No-capacity 429s (Flex's `resource_unavailable`) among them: its backoff grows with them.
    no_capacity: int = 0
    errors: list[str] = field(default_factory=list)
    #: When the current attempt was sent, and what we had sent by then: for learning the server's view.
    mark: SendMark | None = None
    #: When it was first let go to the limiter, and how each attempt went (for `RequestResult.timings`).
    scheduled_at: float | None = None
    attempt_log: list[AttemptTiming] = field(default_factory=list)
    received: ReceiveTimings | None = None
    #: The dollars the attempt in flight holds of the run's budget (`--max_cost_usd`).
    cost: float = 0.0
    #: A successful answer not yet delivered: a bug in what follows it (learning from its headers) must not
    #: throw away what was paid for (`Attempts.run` delivers it).
    answer: HTTPOutcome | None = None

    def state(self, now: float) -> JobState:
        """What the decision step needs to know of this request."""
        waited = now - self.first_rate_limited_at if self.first_rate_limited_at is not None else 0.0
        return JobState(attempts=self.attempts - self.rate_limited, rate_limited_for=waited, no_capacity=self.no_capacity, url=self.url)

    def rate_limited_at(self, now: float) -> None:
        """Its attempt was refused by the rate limit (at `now`): it costs no attempt, only time from the first."""
        self.rate_limited += 1
        if self.first_rate_limited_at is None:
            self.first_rate_limited_at = now

    def no_capacity_at(self, now: float) -> None:
        """Its attempt found the provider without capacity (at `now`): like a rate limit, it costs no attempt."""
        self.rate_limited_at(now)
        self.no_capacity += 1

    def result(self, outcome: HTTPOutcome | None, kind: ResultKind) -> RequestResult:
        succeeded = kind is _SUCCEEDED
        return RequestResult(
            index=self.request.index,
            request=self.request.body,
            metadata=self.request.metadata,
            response=outcome.body if succeeded and outcome is not None else None,
            errors=tuple(self.errors),
            attempts=self.attempts,
            kind=kind,
            estimated_tokens=self.tokens,
            estimated_output_tokens=self.completion_tokens,
            estimated_prompt_tokens=self.prompt_tokens,
            custom_id=self.request.custom_id,
            status=outcome.status if outcome is not None else None,
            request_id=outcome.headers.get("x-request-id") if outcome is not None else None,
            error_body=outcome.body if not succeeded and outcome is not None else None,
            position=self.position,
            timings=self.timings(),
        )

    def timings(self) -> RequestTimings | None:
        if not self.attempt_log:
            return None
        last, received = self.attempt_log[-1], self.received
        scheduled = self.scheduled_at if self.scheduled_at is not None else last.sent
        if received is None:
            return RequestTimings(scheduled, last.sent, last.ended, attempts=tuple(self.attempt_log))
        return RequestTimings(
            scheduled, last.sent, last.ended, first_byte=last.sent + received.first_byte,
            tokens=tuple(last.sent + at for at in received.tokens), attempts=tuple(self.attempt_log),
        )

