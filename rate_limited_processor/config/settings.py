"""Settings for a run, and every default, in one place.

`Settings` is what the library takes; the CLI builds one from flags, and the file job's own options
(resume, ordering, shutdown) have their defaults here too. The API key lives in a `Secret` whose repr and
str never show it, so a Settings object can be logged or printed safely.
"""

from __future__ import annotations

import difflib
import enum
import os
import re
from collections.abc import Mapping
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.arrivals import ARRIVAL_MODES, ArrivalMode
from ..core.limiter import DEFAULT_BURST_SECONDS, Limits
from ..core.retry_policy import MAX_ATTEMPTS, RetryPolicy
from ..providers.registry import (
    BATCH_API_MAX_BYTES,
    BATCH_API_MAX_LINES,
    DEFAULT_KEY_VARIABLE,
    DEFAULT_REQUEST_URL,
    SERVICE_TIERS,
    former_name,
    key_from_environment,
    key_variable_for,
    key_variable_holding,
    service_tier_refusal,
)
from .scrubber import Scrubber

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

#: The cookbook script's default endpoint, kept so its users see no change (`DEFAULT_REQUEST_URL`, from the
#: providers' registry). Where the key is read from when none is given, by the command and the library alike:
#: `API_KEY_VARIABLE`, or the variable of the provider the URL names (`key_variable_for`).
API_KEY_VARIABLE = DEFAULT_KEY_VARIABLE
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
# The Batch API's own limits on one batch's input file (`BATCH_API_MAX_LINES`, `BATCH_API_MAX_BYTES`) are its
# provider's: imported from the providers' registry, and still exported from here.
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


def checked_key(key: Secret | str | None) -> Secret | None:
    """A key as it will be sent, or None; refused (without being shown) when it could not be one."""
    if isinstance(key, Secret):
        key = key.reveal()
    if key is None:
        return None
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
    return Secret(key) if key else None


def check_headers(headers: Mapping[str, str]) -> None:
    for name, value in headers.items():
        if not (name.isprintable() and value.isprintable()) or ":" in name:
            raise ValueError(f"header {name!r} has a name or value that cannot be sent")


@dataclass(frozen=True, slots=True)
class Account:
    """One account (an organisation, a key) with limits of its own: a run spreads its requests over several.

    The key comes from `api_key`, or from the environment variable `api_key_env` (better: a key in a file
    of accounts is one more copy of it to leak). `limits` left None are learned from this account's own
    headers; `headers` are sent with its requests only (e.g. `OpenAI-Organization`).
    """

    name: str
    api_key: Secret | str | None = field(default=None, repr=False)
    api_key_env: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    limits: Limits = Limits(None, None)

    def __post_init__(self) -> None:
        if not self.name or not self.name.isprintable():
            raise ValueError(f"an account needs a printable name, got {self.name!r}")
        key = self.api_key
        if key is None and self.api_key_env is not None:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise ValueError(f"account {self.name!r}: the environment variable {self.api_key_env} is not set")
        object.__setattr__(self, "api_key", checked_key(key))
        check_headers(self.headers)

    @property
    def key(self) -> Secret | None:
        key = self.api_key
        return key if isinstance(key, Secret) else None


#: What a line of an accounts file may hold, and the Limits field each limit goes to.
_ACCOUNT_LIMIT_FIELDS = {
    "max_requests_per_minute": "requests_per_minute",
    "max_tokens_per_minute": "tokens_per_minute",
    "max_input_tokens_per_minute": "tokens_per_minute",  # Anthropic's name for the same limit
    "max_output_tokens_per_minute": "output_tokens_per_minute",
}
_ACCOUNT_FIELDS = ("name", "api_key", "api_key_env", "headers", *_ACCOUNT_LIMIT_FIELDS)
#: What an environment variable's name may be (POSIX's portable names, and lower case).
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The most accounts a file may list: far above any real use, and a bound on what a wrong file costs.
MAX_ACCOUNTS = 1_000


def read_accounts(path: str | Path) -> tuple[Account, ...]:
    """The accounts of a JSONL file, one object per line (blank lines and lines starting with # skipped)::

        {"name": "team-a", "api_key_env": "OPENAI_KEY_A", "max_requests_per_minute": 500}
        {"name": "team-b", "api_key_env": "OPENAI_KEY_B", "headers": {"OpenAI-Organization": "org-..."}}

    ValueError names the line and the field for anything wrong; a key's value is never shown.
    """
    from ..base.strict_json import InvalidJSON, loads  # strict_json imports nothing of ours; local to keep this module light

    accounts: list[Account] = []
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            where = f"{path}, line {number}"
            try:
                record = loads(line)
            except InvalidJSON as error:
                raise ValueError(f"{where}: {error.reason}") from None  # the reason names a column, never the text
            try:
                accounts.append(_account_from(record, where))
            except ValueError as error:
                raise ValueError(_unshown(str(error), record)) from None
            if len(accounts) > MAX_ACCOUNTS:
                raise ValueError(f"{where}: more than {MAX_ACCOUNTS} accounts")
    if not accounts:
        raise ValueError(f"{path}: no accounts (one JSON object per line, each with at least a 'name')")
    names = [account.name for account in accounts]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"{path}: account names must be unique; repeated: {', '.join(map(repr, repeated))}")
    return tuple(accounts)


def _unshown(message: str, record: Any) -> str:
    """`message` with none of the line's strings that could be a key: any value (not the account's name) and
    any field that is no typo of a known one. A key put in the wrong field, or as a field, is not echoed."""
    secrets: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, str):
            secrets.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    if isinstance(record, dict):
        shown = ("name", "api_key_env") if _plainly_a_variable(record.get("api_key_env")) else ("name",)
        collect({name: value for name, value in record.items() if name not in shown})
        secrets.extend(name for name in record if name not in _ACCOUNT_FIELDS and not difflib.get_close_matches(name, _ACCOUNT_FIELDS, n=1))
    else:
        collect(record)
    return Scrubber(secrets)(message)


def _plainly_a_variable(value: Any) -> bool:
    """A name such as OPENAI_KEY_TEAM_A, which no key looks like: words of at most 16 characters joined by "_"."""
    return isinstance(value, str) and _VARIABLE_NAME.fullmatch(value) is not None and all(len(word) <= 16 for word in value.split("_"))


def _account_from(record: Any, where: str) -> Account:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in record:
        if name not in _ACCOUNT_FIELDS:
            close = difflib.get_close_matches(name, _ACCOUNT_FIELDS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (known: {', '.join(_ACCOUNT_FIELDS)})"
            raise ValueError(f"{where}: unknown field {name[:40]!r}{hint}")
    account_name = record.get("name")
    if not isinstance(account_name, str):
        raise ValueError(f"{where}: 'name' must be a string")
    for text_field in ("api_key", "api_key_env"):
        if text_field in record and not isinstance(record[text_field], str):
            raise ValueError(f"{where}: {text_field!r} must be a string")  # never the value: it may be a key
    if "api_key" in record and "api_key_env" in record:
        raise ValueError(f"{where}: give 'api_key_env' or 'api_key', not both")
    if "api_key_env" in record and not _VARIABLE_NAME.fullmatch(record["api_key_env"]):
        raise ValueError(
            f"{where}: 'api_key_env' names the environment variable that holds the key (such as KEY_TEAM_A), not the key itself "
            "(its value is not shown)"
        )
    headers = record.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(value, str) for value in headers.values()):
        raise ValueError(f"{where}: 'headers' must be an object of strings")
    limits: dict[str, float] = {}
    for given, limit_field in _ACCOUNT_LIMIT_FIELDS.items():
        value = record.get(given)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            shown = repr(value) if isinstance(value, (int, float)) else f"a {type(value).__name__}"  # never text: it may be a key
            raise ValueError(f"{where}: {given!r} must be a positive number, got {shown}")
        limits[limit_field] = float(value)
    try:
        return Account(
            account_name, api_key=record.get("api_key"), api_key_env=record.get("api_key_env"), headers=headers,
            limits=Limits(limits.get("requests_per_minute"), limits.get("tokens_per_minute"),
                          output_tokens_per_minute=limits.get("output_tokens_per_minute")),
        )
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _limit_value(name: str, value: float | str) -> float | None:
    """A limit given by its flag's name: a number, or "auto" (None) to learn it from the API."""
    if isinstance(value, str):
        if value.strip().lower() == "auto":
            return None
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{name} must be a number or 'auto', got {str(value)[:40]!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or 'auto', got {type(value).__name__}")
    return float(value)


class _FromEnvironment(enum.Enum):
    """The default key: read from the URL's provider's variable ($OPENAI_API_KEY for OpenAI) when the settings
    are made."""

    FROM_ENVIRONMENT = "from the environment"

    def __repr__(self) -> str:
        return "FROM_ENVIRONMENT"


#: `Settings.api_key`'s default: the key in the URL's provider's variable ($OPENAI_API_KEY for OpenAI), if set.
#: Pass None to send no key at all.
FROM_ENVIRONMENT = _FromEnvironment.FROM_ENVIRONMENT


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs besides its requests."""

    #: Where every request is POSTed (OpenAI, Azure or any OpenAI-compatible server).
    request_url: str
    #: Sent as `Authorization: Bearer …` (or the provider's header). By default the key in the URL's provider's
    #: variable ($OPENAI_API_KEY; $AZURE_OPENAI_API_KEY then $OPENAI_API_KEY for Azure; ...), as the command
    #: does; None sends no key (a local server). A str is wrapped in a `Secret`.
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
    #: Several accounts (organisations, keys) to spread the work over, each with its own buckets; empty: the
    #: one account this Settings describes (`api_key`, `extra_headers`, `limits`).
    accounts: tuple[Account, ...] = ()
    #: Ask chat, completions and Responses requests for a stream, and time its tokens (`streaming.py`); the
    #: results hold the reassembled answer, as unstreamed.
    stream: bool = False
    #: How sends are spread (`arrivals.py`): "even" (the limiter's pacing) or "poisson" (exponential gaps).
    arrivals: ArrivalMode = "even"
    #: Sends per second for the arrivals; None: "even" paces at the limits, "poisson" at the request limit.
    request_rate: float | None = None
    #: Seeds the Poisson gaps, so a benchmark can be replayed; None: a different draw each run.
    arrival_seed: int | None = 0
    #: Daily limits, per UTC day (`core.daily_limit`): reached, the run stops (exit 3 on the command line) before the
    #: request that would pass one. A file job counts across reruns of its output (`<results>.day`); a bare
    #: `Processor` counts what it sends. None: no limit.
    max_requests_per_day: int | None = None
    max_tokens_per_day: int | None = None
    #: The `service_tier` set in every request body that names none ("flex": half price, slower, 429s when it has
    #: no capacity); a line's own stands. None: bodies are sent as they are.
    service_tier: str | None = None
    # The command's flag names, as keyword arguments, so what works on the command line works here
    # (`Settings(url, max_attempts=2, max_requests_per_minute=500)`). Each sets its field of `retry` or
    # `limits`; "auto" (or None) leaves a limit to be learned. Not stored: read them from `retry` and `limits`.
    max_attempts: InitVar[int | None] = None
    max_requests_per_minute: InitVar[float | str | None] = None
    max_tokens_per_minute: InitVar[float | str | None] = None
    max_input_tokens_per_minute: InitVar[float | str | None] = None
    max_output_tokens_per_minute: InitVar[float | str | None] = None
    burst_seconds: InitVar[float | None] = None

    def __post_init__(
        self,
        max_attempts: int | None,
        max_requests_per_minute: float | str | None,
        max_tokens_per_minute: float | str | None,
        max_input_tokens_per_minute: float | str | None,
        max_output_tokens_per_minute: float | str | None,
        burst_seconds: float | None,
    ) -> None:
        if max_attempts is not None:
            object.__setattr__(self, "retry", replace(self.retry, max_attempts=max_attempts))
        if max_tokens_per_minute is not None and max_input_tokens_per_minute is not None:
            raise ValueError("give max_tokens_per_minute or max_input_tokens_per_minute (the same limit), not both")
        limits: dict[str, float | None] = {}
        for name, value in (
            ("requests_per_minute", max_requests_per_minute),
            ("tokens_per_minute", max_tokens_per_minute if max_tokens_per_minute is not None else max_input_tokens_per_minute),
            ("output_tokens_per_minute", max_output_tokens_per_minute),
            ("burst_seconds", burst_seconds),
        ):
            if value is not None:
                limits[name] = _limit_value(f"max_{name}" if name != "burst_seconds" else name, value)
        if limits:
            object.__setattr__(self, "limits", replace(self.limits, **limits))  # type: ignore[arg-type]  # burst_seconds is never None
        key = self.api_key
        if key is FROM_ENVIRONMENT:
            key = key_from_environment(self.request_url, os.environ)
        object.__setattr__(self, "api_key", checked_key(key))
        check_headers(self.extra_headers)
        object.__setattr__(self, "accounts", tuple(self.accounts))
        names = [account.name for account in self.accounts]
        if len(set(names)) != len(names):
            raise ValueError(f"account names must be unique, got {names}")
        if not 0 < self.headroom <= 1:
            raise ValueError(f"headroom must be a fraction in (0, 1], got {self.headroom}")
        if self.request_timeout <= 0:
            raise ValueError(f"request_timeout must be positive, got {self.request_timeout}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {self.max_in_flight}")
        if self.arrivals not in ARRIVAL_MODES:
            raise ValueError(f"arrivals must be one of {ARRIVAL_MODES}, got {self.arrivals!r}")
        for name in ("max_requests_per_day", "max_tokens_per_day"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if self.service_tier is not None and self.service_tier not in SERVICE_TIERS:
            raise ValueError(f"service_tier must be one of {', '.join(SERVICE_TIERS)}, got {self.service_tier!r}")
        tier_refusal = service_tier_refusal(self.request_url) if self.service_tier is not None else None
        if tier_refusal is not None:
            raise ValueError(tier_refusal)
        if self.request_rate is not None and not 0 < self.request_rate < float("inf"):
            raise ValueError(f"request_rate must be a positive number of requests per second, got {self.request_rate}")

    @property
    def key(self) -> Secret | None:
        """The key to send, as resolved when the settings were made (None: send none)."""
        key = self.api_key
        return key if isinstance(key, Secret) else None


def __getattr__(name: str) -> object:
    """Names earlier releases had here that are a provider's now (`ANTHROPIC_API_KEY_VARIABLE`)."""
    return former_name(__name__, name)
