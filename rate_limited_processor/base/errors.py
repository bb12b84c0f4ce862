"""Every exception the package raises on purpose, under one base, so callers catch meaning, not modules.

    ProcessorError
    ├── UsageError             a flag, a file or a setting is wrong; nothing was sent
    │   └── ResumeError        the results file cannot be resumed safely; nothing was sent
    ├── RunStopped             the run stopped before every request had a result (a rerun sends the rest)
    ├── LimiterUnavailable     the rate limiter's store (Redis) cannot be reached
    ├── InvalidRequest         one request cannot be sent (its reason names it); the run goes on
    │   ├── UnsupportedEndpoint   the URL names an endpoint whose cost cannot be estimated
    │   └── EstimationError       the body's shape is not one the API accepts
    └── TransportError         one attempt got no answer: refused, unresolvable, TLS, reset, timed out

`InvalidRequest` and its children are also `ValueError`s, and `LimiterUnavailable` a `ConnectionError`,
as they were before the hierarchy existed, so older `except ValueError` code keeps working.
"""

from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "ProcessorError",
    "UsageError",
    "ResumeError",
    "RunStopped",
    "LimiterUnavailable",
    "InvalidRequest",
    "UnsupportedEndpoint",
    "EstimationError",
    "TransportError",
    "NoAnswer",
    "StreamProblem",
]


class ProcessorError(Exception):
    """The base of every exception rate_limited_processor raises on purpose."""


class UsageError(ProcessorError):
    """A problem with the flags, files or settings, found before anything was sent."""


class ResumeError(UsageError):
    """The results file cannot be resumed safely; nothing has been sent."""


class RunStopped(ProcessorError, RuntimeError):
    """The run stopped before every request had a result; `stats.stop_reason` says why.

    Raised after the last result. What was not finished is not in the results, so a rerun sends it. `stats` is the
    run's `RunStats` (typed loosely here: errors are a leaf, which imports nothing of the package).
    """

    def __init__(self, reason: str, stats: Any) -> None:
        super().__init__(reason)
        self.stats = stats


class LimiterUnavailable(ProcessorError, ConnectionError):
    """The limiter's shared store cannot be reached (the message names the server, never its password)."""


class InvalidRequest(ProcessorError, ValueError):
    """A request that must not be sent: the reason says why (no endpoint, a missing field, an unreadable shape)."""


class UnsupportedEndpoint(InvalidRequest):
    """The URL names an endpoint whose token cost we cannot estimate."""


class EstimationError(InvalidRequest):
    """The body's shape is not one the API accepts, so its cost cannot be estimated (nor the request sent)."""


class NoAnswer(enum.Enum):
    """Why an attempt got no HTTP answer. The first three are about the endpoint, not the request."""

    #: Nothing listens there (connection refused), or the host cannot be reached.
    CONNECT = "connect"
    #: The host name does not resolve.
    DNS = "dns"
    #: The TLS handshake failed (certificate, protocol).
    TLS = "tls"
    #: No complete answer within the request timeout.
    TIMEOUT = "timeout"
    #: The connection broke mid-way (reset, closed, a malformed answer).
    BROKEN = "broken"

    @property
    def about_the_endpoint(self) -> bool:
        """Every request to this URL would fail the same way: the URL, not the line, is wrong."""
        return self in (NoAnswer.CONNECT, NoAnswer.DNS, NoAnswer.TLS)


class TransportError(ProcessorError):
    """One attempt got no answer. `kind` says why; the message is already scrubbed of secrets."""

    def __init__(self, kind: NoAnswer, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class StreamProblem(ValueError):
    """A streamed answer cannot be an answer: an event that is not JSON, or not an object, or out of its order."""
