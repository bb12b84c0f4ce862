"""The providers, and which one a URL or an answer's headers belong to.

The rest of the package asks here (`provider_for(url)`), never names a provider: a new provider is a module
like `openai`, `azure`, `anthropic` or `gemini`, and a line in `PROVIDERS`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from . import anthropic, azure, gemini, openai
from .endpoints import Endpoint, endpoint_from_url
from .provider import ErrorDialect, Provider
from .rate_limits import RateLimitReport

__all__ = [
    "PROVIDERS",
    "DEFAULT_PROVIDER",
    "DEFAULT_REQUEST_URL",
    "EXAMPLE_REQUEST_URL",
    "DEFAULT_API_ROOT",
    "DEFAULT_PRICE_PROVIDER",
    "ERRORS",
    "provider_for",
    "key_variable_for",
    "key_variable_holding",
    "key_from_environment",
    "wait_in_body",
    "usage_in_answer",
    "quota_exhausted_for_the_day",
    "model_in_url",
    "price_provider_for",
    "auth_headers_for",
    "KEY_HEADERS",
    "needs_a_key",
    "parse_rate_limit_headers",
    "states_rate_limits",
    "limit_floor",
    "PROBE_BODIES",
    "former_name",
    "SERVICE_TIERS",
    "FLEX_REQUEST_TIMEOUT",
    "BATCH_API_MAX_LINES",
    "BATCH_API_MAX_BYTES",
    "LARGEST_BATCH_MAX_LINES",
    "batch_max_lines",
    "is_flex",
    "with_service_tier",
    "service_tier_refusal",
    "MESSAGE_STREAM_EVENTS",
    "MessageStream",
]

#: Asked in this order; the last serves any URL (OpenAI-compatible servers).
PROVIDERS: tuple[Provider, ...] = (anthropic.PROVIDER, gemini.PROVIDER, azure.PROVIDER, openai.PROVIDER)
#: What a URL that names no provider speaks.
DEFAULT_PROVIDER = openai.PROVIDER
#: The URL a run posts to when none is given.
DEFAULT_REQUEST_URL = openai.DEFAULT_URL
#: The API root priced when none is given.
DEFAULT_API_ROOT = openai.API_ROOT
#: A request URL, as an example in messages.
EXAMPLE_REQUEST_URL = openai.EXAMPLE_URL
#: The provider priced when the price data knows none for the URL (localhost, a gateway).
DEFAULT_PRICE_PROVIDER: str = openai.PROVIDER.price_provider or ""
#: Every provider's error words at once: an error is read alike whoever sent it.
ERRORS = ErrorDialect.merged(*(provider.errors for provider in PROVIDERS))
#: The `service_tier` values a body may name (`--service_tier`), and how a body gets one it lacks.
SERVICE_TIERS = openai.SERVICE_TIERS
with_service_tier = openai.with_service_tier
#: Whether a body asks for the slow, half-price tier (OpenAI's Flex): priced at the batch price, and given at
#: least `FLEX_REQUEST_TIMEOUT` seconds to answer.
is_flex = openai.is_flex
FLEX_REQUEST_TIMEOUT = openai.FLEX_REQUEST_TIMEOUT
#: The most lines, and bytes, one batch's input file takes in OpenAI's Files and Batches API (`--batch_max_lines`).
BATCH_API_MAX_LINES = openai.BATCH_MAX_LINES
BATCH_API_MAX_BYTES = openai.BATCH_MAX_BYTES
#: The most requests any provider's batch takes (Anthropic's 100,000): a larger --batch_max_lines is no one's.
LARGEST_BATCH_MAX_LINES = max(provider.batch_max_lines or BATCH_API_MAX_LINES for provider in PROVIDERS)


def batch_max_lines(request_url: str) -> int:
    """The most requests one batch takes at this URL's batch API (OpenAI's and Azure's 50,000; Anthropic's 100,000)."""
    return provider_for(request_url).batch_max_lines or BATCH_API_MAX_LINES
#: A stream of Messages events (Anthropic's, whatever the URL: a gateway may relay them), and how it folds into
#: the unstreamed answer; OpenAI's chunks and Responses events are the transport's default.
MESSAGE_STREAM_EVENTS = anthropic.STREAM_EVENTS
MessageStream = anthropic.MessageStream
#: The key variable of a URL that names no provider (the command's default).
DEFAULT_KEY_VARIABLE = DEFAULT_PROVIDER.key_variable


@functools.lru_cache(maxsize=64)
def provider_for(url: str) -> Provider:
    """The provider whose API `url` is: the first in `PROVIDERS` that serves it."""
    for provider in PROVIDERS:
        if provider.serves(url):
            return provider
    return DEFAULT_PROVIDER


def service_tier_refusal(request_url: str) -> str | None:
    """Why `service_tier` cannot be set for every line sent to this URL, or None when its API takes OpenAI's tiers
    (OpenAI's, and the OpenAI-compatible servers it stands for: one that does not know the field ignores it) and
    its endpoint is one that takes a tier (chat completions, Responses; embeddings and completions take none)."""
    provider = provider_for(request_url)
    if provider is not DEFAULT_PROVIDER:
        return f"service_tier ({', '.join(SERVICE_TIERS)}) is OpenAI's; {provider.name}'s API does not take it in every body"
    try:
        endpoint = endpoint_from_url(request_url)
    except ValueError:
        return None  # a URL naming no endpoint is refused elsewhere, with its own reason
    if endpoint.value not in openai.TIERED_ENDPOINTS:
        return f"service_tier is for chat completions and Responses; {endpoint.value} takes none"
    return None


def key_variable_for(request_url: str) -> str:
    """The environment variable a key is read from for this URL."""
    return provider_for(request_url).key_variable


def key_variable_holding(request_url: str, environment: Mapping[str, str]) -> str:
    """The variable this URL's key is read from in this environment: its provider's, else the first of its others
    that is set (Gemini's $GOOGLE_API_KEY, Azure's $OPENAI_API_KEY); the provider's own when none is."""
    provider = provider_for(request_url)
    variables = (provider.key_variable, *provider.more_key_variables)
    return next((variable for variable in variables if environment.get(variable)), variables[0])


def key_from_environment(request_url: str, environment: Mapping[str, str]) -> str | None:
    """The key for this URL from the environment (`key_variable_holding`); None when no variable holds one."""
    return environment.get(key_variable_holding(request_url, environment)) or None


#: The providers that say a wait in their error bodies, apart from their words.
_BODY_WAITS = tuple(provider.wait_in_body for provider in PROVIDERS if provider.wait_in_body is not None)


def wait_in_body(body: Any) -> float | None:
    """The wait an error body asks for in a provider's own field (Gemini's RetryInfo.retryDelay); None if none."""
    for read in _BODY_WAITS:
        seconds = read(body)
        if seconds is not None:
            return seconds
    return None


_USAGE_READERS = tuple(provider.usage_in_answer for provider in PROVIDERS if provider.usage_in_answer is not None)


def usage_in_answer(answer: Mapping[str, Any]) -> tuple[int, int] | None:
    """(input, output) tokens an answer counts in a provider's own field, not `usage` (Gemini's usageMetadata)."""
    for read in _USAGE_READERS:
        counts = read(answer)
        if counts is not None:
            return counts
    return None


_DAILY_QUOTA_READERS = tuple(
    provider.quota_exhausted_for_the_day for provider in PROVIDERS if provider.quota_exhausted_for_the_day is not None
)


def quota_exhausted_for_the_day(body: Any, now: float | None = None) -> str | None:
    """Which per-day quota an error body says ran out, and when it resets (Gemini's QuotaFailure); None if none does.
    `now`: epoch seconds (None: the wall clock)."""
    for read in _DAILY_QUOTA_READERS:
        quota = read(body, now)
        if quota is not None:
            return quota
    return None


def model_in_url(url: str) -> str | None:
    """The model the request URL names, for a provider whose URLs name it (Gemini's); None otherwise."""
    read = provider_for(url).model_in_url
    return read(url) if read is not None else None


def price_provider_for(url: str) -> str:
    """The provider's id in the price data for a URL whose host the price data does not know (a gateway, a mock)."""
    return provider_for(url).price_provider or DEFAULT_PRICE_PROVIDER


#: The headers that carry a key, for any provider (lower case): those its auth headers hold only when given a key.
KEY_HEADERS = frozenset(
    name.lower() for provider in PROVIDERS for name in provider.auth_headers("key").keys() - provider.auth_headers(None).keys()
)


def auth_headers_for(request_url: str, key: str | None) -> dict[str, str]:
    """The key where the API at `request_url` looks for it, and any version header it wants."""
    return provider_for(request_url).auth_headers(key)


def needs_a_key(url: str) -> bool:
    """The URL is on a provider's own API host, which refuses every request without a key (a local or self-hosted
    server may want none)."""
    return any(provider.owns_host(url) for provider in PROVIDERS)


#: Whose headers an answer carries, asked in this order: a provider with headers of its own, else the default's.
_HEADER_DIALECTS = tuple(
    (provider.claims_rate_limit_headers, provider.parse_rate_limits) for provider in PROVIDERS if provider.claims_rate_limit_headers is not None
)
_READ_HEADERS = frozenset().union(*(provider.rate_limit_headers for provider in PROVIDERS))
_FLOORS: Mapping[str, float] = {name: floor for provider in PROVIDERS for name, floor in provider.limit_floors.items()}


def parse_rate_limit_headers(headers: Mapping[str, str], *, now: float | None = None) -> RateLimitReport:
    """What an answer's rate-limit headers say, read by the provider whose headers they are (told by their names,
    not the URL: a gateway may front any API). Resets given as times are read relative to `now` (epoch seconds,
    default the wall clock). Headers with none of these report nothing; `states_rate_limits` says so at less cost."""
    for states, parse in _HEADER_DIALECTS:
        if states(headers):
            return parse(headers, now)
    return DEFAULT_PROVIDER.parse_rate_limits(headers, now)


def states_rate_limits(headers: Mapping[str, str]) -> bool:
    """Whether the headers hold any that `parse_rate_limit_headers` reads (a gateway's, a mock's may hold none)."""
    return not _READ_HEADERS.isdisjoint(headers)


#: The cheapest request each endpoint takes, from the provider that serves it (`--show_limits` sends one).
PROBE_BODIES: Mapping[Endpoint, Mapping[str, Any]] = {
    Endpoint(path): body for provider in reversed(PROVIDERS) for path, body in provider.probe_bodies.items()
}


def limit_floor(header: str) -> float:
    """The least a real account's limit stated in this header can be."""
    return _FLOORS.get(header, 1)


#: Names that modules outside providers/ had in earlier releases, and are a provider's now.
_FORMER_NAMES: Mapping[str, object] = {
    "ANTHROPIC_API_KEY_VARIABLE": anthropic.API_KEY_VARIABLE,
    "ANTHROPIC_VERSION": anthropic.VERSION,
}


def former_name(module: str, name: str) -> object:
    """A module's `__getattr__`: the value of one of its names of earlier releases, or AttributeError."""
    if name in _FORMER_NAMES:
        return _FORMER_NAMES[name]
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
