"""Settings for a run, and every default, in one place.

`Settings` is what the library takes; the CLI builds one from flags, and the file job's own options
(resume, ordering, shutdown) have their defaults here too. The API key lives in a `Secret` whose repr and
str never show it, so a Settings object can be logged or printed safely.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .limiter import DEFAULT_BURST_SECONDS, Limits
from .retry_policy import MAX_ATTEMPTS, RetryPolicy

__all__ = [
    "Secret",
    "Settings",
    "FROM_ENVIRONMENT",
    "API_KEY_VARIABLE",
    "DEFAULT_REQUEST_URL",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_BURST_SECONDS",
    "DEFAULT_SHUTDOWN_GRACE",
    "DEFAULT_ORDERED_WINDOW",
    "DEFAULT_LOGGING_LEVEL",
    "DEFAULT_STATUS_INTERVAL",
    "REDIS_URL_VARIABLE",
    "BATCH_API_MAX_LINES",
    "BATCH_API_MAX_BYTES",
    "DEFAULT_BATCH_MAX_LINES",
    "DEFAULT_BATCH_POLL_INTERVAL",
]

#: The cookbook script's default endpoint, kept so its users see no change.
DEFAULT_REQUEST_URL = "https://api.openai.com/v1/embeddings"
#: Where the key is read from when none is given, by the command and the library alike.
API_KEY_VARIABLE = "OPENAI_API_KEY"
#: Attempts per request in all, first try included (the cookbook's default).
DEFAULT_MAX_ATTEMPTS = MAX_ATTEMPTS
#: Seconds one attempt may take before it is abandoned and retried (openai-python's default).
DEFAULT_REQUEST_TIMEOUT = 600.0
#: Concurrent requests at most. High enough that the rate limits bind, not this; it bounds sockets and memory.
DEFAULT_MAX_IN_FLIGHT = 1_000
#: Seconds the requests in flight get to finish after Ctrl-C / SIGTERM before they are abandoned.
DEFAULT_SHUTDOWN_GRACE = 30.0
#: With --ordered, how many finished results may wait for an earlier one: the reorder buffer's size.
DEFAULT_ORDERED_WINDOW = 10_000
#: WARNING, not the cookbook's INFO: at INFO a 10-million-line job writes 20 million lines.
DEFAULT_LOGGING_LEVEL = "WARNING"
#: Seconds between the command's one-line status lines when it draws no progress bar (cron, nohup, a pipe).
DEFAULT_STATUS_INTERVAL = 30.0
#: The Batch API's own limits on one batch's input file (https://platform.openai.com/docs/guides/batch).
BATCH_API_MAX_LINES = 50_000
BATCH_API_MAX_BYTES = 200 * 1024**2
#: With --mode batch: lines per batch (the API's most), and seconds between asks after each batch's progress.
DEFAULT_BATCH_MAX_LINES = BATCH_API_MAX_LINES
DEFAULT_BATCH_POLL_INTERVAL = 30.0
#: Where the command looks for a Redis URL when --redis_url is not given.
REDIS_URL_VARIABLE = "RATE_LIMITED_PROCESSOR_REDIS_URL"


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

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("a Secret cannot be pickled")


class _FromEnvironment(enum.Enum):
    """The default key: read from $OPENAI_API_KEY when the settings are made."""

    FROM_ENVIRONMENT = "from the environment"

    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


#: `Settings.api_key`'s default: the key in $OPENAI_API_KEY, if set. Pass None to send no key at all.
FROM_ENVIRONMENT = _FromEnvironment.FROM_ENVIRONMENT


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs besides its requests."""

    #: Where every request is POSTed (OpenAI, Azure or any OpenAI-compatible server).
    request_url: str
    #: Sent as `Authorization: Bearer …` (or `api-key` for Azure). By default the key in $OPENAI_API_KEY,
    #: as the command does; None sends no key (a local server). A str is wrapped in a `Secret`.
    api_key: Secret | str | None | _FromEnvironment = FROM_ENVIRONMENT
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
        key = self.api_key
        if key is FROM_ENVIRONMENT:
            key = os.environ.get(API_KEY_VARIABLE) or None
        if isinstance(key, Secret):
            key = key.reveal()
        if key is not None:
            # Keys read from files often end in a newline; anything else unprintable cannot be a key
            # and would fail every request inside the HTTP client instead of here.
            key = key.strip()
            # The two ways a key copied from a header or a shell snippet usually arrives; neither is the key.
            if key[:7].lower() == "bearer ":
                raise ValueError("api_key starts with 'Bearer ': give the key alone, drop 'Bearer ' (the key itself is not shown)")
            if len(key) >= 2 and key[0] == key[-1] and key[0] in "'\"":
                raise ValueError("api_key is wrapped in quotes: give the key alone, without them (the key itself is not shown)")
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

    @property
    def key(self) -> Secret | None:
        """The key to send, as resolved when the settings were made (None: send none)."""
        key = self.api_key
        return key if isinstance(key, Secret) else None
