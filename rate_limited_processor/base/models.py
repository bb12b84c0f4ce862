"""The values that pass between reading, dispatching and writing."""

from __future__ import annotations

import enum
from typing import Any

from .records import record

__all__ = ["APIRequest", "RejectedLine", "RequestResult", "ResultKind", "RequestTimings", "AttemptTiming"]


@record
class APIRequest:
    """One request to send: the body POSTed as is, and metadata that rides along unsent."""

    #: 1-based input line number (or position in the iterable), used in every message about this request.
    index: int
    body: dict[str, Any]
    #: Passed through to the output; None means the input had none (and the output row leaves it out).
    metadata: Any = None
    #: How messages name it, e.g. "line 17"; empty means "request <index>".
    label: str = ""
    #: The request's own endpoint (a Batch line's "url", e.g. "/v1/embeddings"); None: the run's URL.
    url: str | None = None
    #: The id the input gave it (a Batch line's custom_id, or metadata.custom_id); unique in a file.
    custom_id: str | None = None

    @property
    def name(self) -> str:
        """How messages name it: by its input line when it came from a file."""
        return self.label or f"request {self.index}"


@record
class RejectedLine:
    """An input line that cannot become a request (not JSON, not an object, a duplicate id): recorded, never sent."""

    index: int
    reason: str
    #: What the line held: the parsed value when it was JSON, else its text.
    content: Any
    #: The line's id, when it had a readable one.
    custom_id: str | None = None


class ResultKind(enum.Enum):
    """How a request ended."""

    #: The API answered it: `response` holds the answer.
    SUCCEEDED = "succeeded"
    #: Sent, and failed after its last attempt: `errors` says what went wrong each time.
    FAILED = "failed"
    #: Never sent: the line could not be a request (`errors` holds the one reason).
    INVALID = "invalid"


# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_SUCCEEDED = ResultKind.SUCCEEDED


@record
class AttemptTiming:
    """One HTTP attempt: when it was sent and ended (the run's clock), and how."""

    sent: float
    ended: float
    #: The HTTP status, or why no answer came ("timeout", "broken", "connect", ...).
    outcome: int | str
    #: A rate-limit 429 (not "request too large", not a quota).
    rate_limited: bool = False


@record
class RequestTimings:
    """When things happened to one request, in seconds on the run's clock (`Processor.clock`).

    `scheduled` is when the request was first let go to the rate limiter (after `--arrivals` said it may
    go); the rest are of its last attempt. So `latency` is the server's time, and `latency_from_scheduled`
    adds the waits for the limiter, the retries and the 429 pauses.
    """

    scheduled: float
    sent: float
    #: The last byte of the answer (or when the attempt was given up).
    finished: float
    first_byte: float | None = None
    #: A streamed answer: each moment output arrived; the first is the first token. Empty otherwise.
    tokens: tuple[float, ...] = ()
    #: Every attempt, oldest first (429s included).
    attempts: tuple[AttemptTiming, ...] = ()

    @property
    def latency(self) -> float:
        """Seconds from sending the last attempt to its last byte."""
        return self.finished - self.sent

    @property
    def latency_from_scheduled(self) -> float:
        """Seconds from being scheduled to the last byte: what waiting for the limits cost, on top."""
        return self.finished - self.scheduled

    @property
    def time_to_first_token(self) -> float | None:
        return self.tokens[0] - self.sent if self.tokens else None

    def inter_token_gaps(self) -> list[float]:
        """Seconds between one arrival of output and the next."""
        tokens = self.tokens
        return [later - earlier for earlier, later in zip(tokens, tokens[1:], strict=False)]


@record
class RequestResult:
    """The fate of one request: a response, or the errors of every attempt."""

    index: int
    #: The body that was (or would have been) sent; for a rejected line, what the line held.
    request: Any
    metadata: Any
    #: The API's JSON response on success, else None.
    response: dict[str, Any] | None
    #: One message per failed attempt (or the reason a line was rejected), oldest first.
    errors: tuple[str, ...]
    #: HTTP attempts made (0 for a line rejected before sending).
    attempts: int
    kind: ResultKind
    #: Tokens charged against the TPM limit per attempt (0 for a rejected line).
    estimated_tokens: int = 0
    #: The completion budget: part of `estimated_tokens`, except for Anthropic, whose output is limited apart.
    estimated_output_tokens: int = 0
    custom_id: str | None = None
    #: HTTP status of the last attempt (None if it got no response or was never sent).
    status: int | None = None
    #: The server's x-request-id for the last attempt, when it sent one.
    request_id: str | None = None
    #: The last attempt's JSON error body, when it failed with one.
    error_body: Any = None
    #: 0-based place in the stream of requests the run read (results arrive in completion order);
    #: None for a result made outside a run.
    position: int | None = None
    #: When it was scheduled, sent and answered (None for a line never sent).
    timings: RequestTimings | None = None
    #: The prompt's part of the estimate (`estimated_tokens` less the completion budget, but for Anthropic all of it).
    estimated_prompt_tokens: int = 0

    @property
    def succeeded(self) -> bool:
        return self.kind is _SUCCEEDED
