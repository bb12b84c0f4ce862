"""The values that pass between reading, dispatching and writing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["APIRequest", "RejectedLine", "RequestResult"]


@dataclass(frozen=True, slots=True)
class APIRequest:
    """One request to send: the body POSTed as is, and metadata that rides along unsent."""

    #: 1-based input line number (or position in the iterable), used in every message about this request.
    index: int
    body: dict[str, Any]
    #: Passed through to the output; None means the input had none (and the output row leaves it out).
    metadata: Any = None
    #: How messages name it, e.g. "line 17"; empty means "request <index>".
    label: str = ""


@dataclass(frozen=True, slots=True)
class RejectedLine:
    """An input line that cannot become a request (not JSON, not an object): recorded, never sent."""

    index: int
    reason: str
    #: What the line held: the parsed value when it was JSON, else its text.
    content: Any


@dataclass(frozen=True, slots=True)
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
    #: Tokens charged against the TPM limit per attempt (0 for a rejected line).
    estimated_tokens: int = 0

    @property
    def succeeded(self) -> bool:
        return self.response is not None

    def to_row(self) -> list[Any]:
        """The cookbook's output shape: [request, response, metadata] or [request, [errors...], metadata]."""
        outcome: Any = self.response if self.response is not None else list(self.errors)
        if self.metadata is None:
            return [self.request, outcome]
        return [self.request, outcome, self.metadata]
