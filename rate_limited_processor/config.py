"""Settings for a run, with the defaults documented in one place.

`Settings` is what the library takes; the CLI builds one from flags. The API key lives in a `Secret` whose
repr and str never show it, so a Settings object can be logged or printed safely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .limiter import Limits
from .retry_policy import MAX_ATTEMPTS, RetryPolicy

__all__ = [
    "Secret",
    "Settings",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_MAX_IN_FLIGHT",
]

#: Attempts per request in all, first try included (the cookbook's default).
DEFAULT_MAX_ATTEMPTS = MAX_ATTEMPTS
#: Seconds one attempt may take before it is abandoned and retried (openai-python's default).
DEFAULT_REQUEST_TIMEOUT = 600.0
#: Concurrent requests at most. High enough that the rate limits bind, not this; it bounds sockets and memory.
DEFAULT_MAX_IN_FLIGHT = 1_000


class Secret:
    """A string that never shows itself: repr, str and format print a placeholder."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> object:
        raise TypeError("a Secret cannot be pickled")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs besides its requests."""

    #: Where every request is POSTed (OpenAI, Azure or any OpenAI-compatible server).
    request_url: str
    #: Sent as `Authorization: Bearer …` (or `api-key` for Azure); None sends no key. A str is wrapped.
    api_key: Secret | str | None = None
    #: The limits to stay under. A field left None is learned from the API's x-ratelimit-* headers
    #: (starting conservatively until the first answer); a given one is lowered to what the API reports.
    #: `UNLIMITED` (math.inf) sends as fast as the server answers.
    limits: Limits = Limits(None, None)
    #: Send at this fraction of the limits, leaving the rest to other traffic on the same account.
    headroom: float = 1.0
    #: Force one tiktoken encoding for every request; None picks it from each request's `model`.
    token_encoding_name: str | None = None
    retry: RetryPolicy = RetryPolicy(max_attempts=DEFAULT_MAX_ATTEMPTS)
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    #: Extra HTTP headers sent with every request (never logged: they may carry credentials).
    extra_headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        key = self.api_key.reveal() if isinstance(self.api_key, Secret) else self.api_key
        if key is not None:
            # Keys read from files often end in a newline; anything else unprintable cannot be a key
            # and would fail every request inside the HTTP client instead of here.
            key = key.strip()
            if not key.isprintable() or " " in key:
                raise ValueError("api_key contains spaces or control characters (the key itself is not shown)")
            object.__setattr__(self, "api_key", Secret(key) if key else None)
        for name, value in self.extra_headers.items():
            if not (name.isprintable() and value.isprintable()) or ":" in name:
                raise ValueError(f"header {name!r} has a name or value that cannot be sent")
        if not 0 < self.headroom <= 1:
            raise ValueError(f"headroom must be a fraction in (0, 1], got {self.headroom}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {self.request_timeout}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
