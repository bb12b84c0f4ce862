"""What a run is asked to do: `settings` (Settings, Account, Secret, the limits and retry policy given) and
`credentials` (keys, auth headers, scrubbing). The names of `settings` are re-exported here, where earlier
releases had them (`rate_limited_processor.config`)."""

from ..providers.registry import former_name
from .settings import (
    API_KEY_VARIABLE,
    BATCH_API_MAX_BYTES,
    BATCH_API_MAX_LINES,
    DEFAULT_BATCH_MAX_LINES,
    DEFAULT_BATCH_POLL_INTERVAL,
    DEFAULT_BURST_SECONDS,
    DEFAULT_LOGGING_LEVEL,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_ORDERED_WINDOW,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_REQUEST_URL,
    DEFAULT_SHUTDOWN_GRACE,
    DEFAULT_STATUS_INTERVAL,
    FROM_ENVIRONMENT,
    REDIS_URL_VARIABLE,
    Account,
    Secret,
    Settings,
    key_variable_for,
    key_variable_holding,
    read_accounts,
)

__all__ = [
    "Secret",
    "Settings",
    "Account",
    "read_accounts",
    "FROM_ENVIRONMENT",
    "API_KEY_VARIABLE",
    "key_variable_for",
    "key_variable_holding",
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


def __getattr__(name: str) -> object:
    """Names earlier releases had here that are a provider's now (`ANTHROPIC_API_KEY_VARIABLE`)."""
    return former_name(__name__, name)
