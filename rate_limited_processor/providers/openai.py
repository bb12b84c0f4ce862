"""OpenAI's API, and every OpenAI-compatible server (vLLM, a gateway, the mock): the default provider.

Its key goes in `Authorization: Bearer`, read from $OPENAI_API_KEY. Its answers state the limits in
`x-ratelimit-*` headers: limits per minute, what remains, and resets as Go durations ("12ms", "6m0s"), or as
bare seconds where a server (Azure) writes them so. Its rate limiter counts a request's prompt plus its whole
completion budget against the tokens-per-minute limit (`Endpoint.charged_tokens`), and counts characters, not
tokenizer tokens: about one token per `CHARACTERS_PER_TOKEN` characters (`estimate_from_characters`).

Flex processing (`"service_tier": "flex"` in a chat or Responses body) is priced at the Batch API's rates, answers
more slowly (its guide advises a 15-minute timeout, `FLEX_REQUEST_TIMEOUT`), and when it has no capacity answers
429 with code `resource_unavailable` ("Resource unavailable. Please try again later."): not the account's rate
limit, and not charged, so it is retried with backoff and moves no rate (`ERRORS.no_capacity_codes`).
"""

from __future__ import annotations

from collections.abc import Mapping

from ..base.durations import parse_duration
from .provider import ErrorDialect, Provider
from .rate_limits import (
    MIN_STATED_REQUESTS_PER_MINUTE,
    MIN_STATED_TOKENS_PER_MINUTE,
    RateLimitReport,
    StatedLimits,
    count_left,
    exhausted,
    positive_number,
)

__all__ = [
    "PROVIDER", "DEFAULT_URL", "API_KEY_VARIABLE", "CHARACTERS_PER_TOKEN", "parse_rate_limits", "serves", "auth_headers",
    "SERVICE_TIERS", "TIERED_ENDPOINTS", "FLEX_TIER", "FLEX_REQUEST_TIMEOUT", "NO_CAPACITY_CODE", "is_flex", "with_service_tier",
]

#: The cookbook script's default endpoint, kept so its users see no change.
DEFAULT_URL = "https://api.openai.com/v1/embeddings"
#: Its API's root, which every endpoint hangs from.
API_ROOT = "https://api.openai.com/v1"
#: A URL to show as an example of one.
EXAMPLE_URL = "https://api.openai.com/v1/chat/completions"
#: Where the key is read from when none is given, by the command and the library alike.
API_KEY_VARIABLE = "OPENAI_API_KEY"
#: Its rule of thumb, and how its rate limiter counts without running the tokenizer.
CHARACTERS_PER_TOKEN = 4
#: Its own API host, which refuses every request without a key.
HOST = "api.openai.com"

#: The body's `service_tier` values the API takes: "auto" (the project's default), "default", "flex", "priority".
SERVICE_TIERS = ("auto", "default", "flex", "priority")
#: The tier that is half price, slower, and sometimes without capacity.
FLEX_TIER = "flex"
#: Seconds a Flex request may take: its guide raises the client's timeout to 15 minutes, as its answers queue.
FLEX_REQUEST_TIMEOUT = 900.0
#: The code of Flex's 429 when it has no capacity now ("Resource unavailable. Please try again later.").
NO_CAPACITY_CODE = "resource_unavailable"

#: Limits Azure states when it does not know them (`x-ratelimit-limit-tokens: -1` beside `x-ratelimit-reset-tokens: 0`):
#: no limit is learned from them, and no warning given.
UNKNOWN_LIMITS = frozenset({-1.0, 0.0})

_LIMIT_FLOORS = {"x-ratelimit-limit-requests": MIN_STATED_REQUESTS_PER_MINUTE, "x-ratelimit-limit-tokens": MIN_STATED_TOKENS_PER_MINUTE}
#: (remaining, limit) header pairs: a remaining 0 beside a stated limit is an empty bucket.
_REMAINING = tuple((f"x-ratelimit-remaining-{name}", f"x-ratelimit-limit-{name}") for name in ("requests", "tokens"))
_HEADERS = frozenset(("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", *_LIMIT_FLOORS, *(remaining for remaining, _ in _REMAINING)))


def serves(url: str) -> bool:
    """Any URL: every server that is no other provider's is taken to speak OpenAI's API."""
    return True


def auth_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


def parse_rate_limits(headers: Mapping[str, str], now: float | None = None) -> RateLimitReport:
    """Its `x-ratelimit-*` headers (resets as Go durations, or bare seconds). A stated limit that is not a finite
    number at least `MIN_STATED_*` is left out, and listed in `ignored`; a limit of -1 or 0 (`UNKNOWN_LIMITS`) is
    Azure saying it does not know, and that limit's remaining and reset headers say nothing either. `now` is not
    needed: resets are relative."""
    limit = StatedLimits(headers, _LIMIT_FLOORS, UNKNOWN_LIMITS)
    limit_requests, limit_tokens = limit("x-ratelimit-limit-requests"), limit("x-ratelimit-limit-tokens")
    unknown = limit.unstated
    requests_known, tokens_known = "x-ratelimit-limit-requests" not in unknown, "x-ratelimit-limit-tokens" not in unknown
    resets = [headers.get("x-ratelimit-reset-requests") if requests_known else None, headers.get("x-ratelimit-reset-tokens") if tokens_known else None]
    bare_seconds = any(text is not None and positive_number(text) is not None for text in resets)
    return RateLimitReport(
        limit_requests=limit_requests,
        limit_tokens=limit_tokens,
        reset_requests=_duration(resets[0]),
        reset_tokens=_duration(resets[1]),
        reset_resolution=1.0 if bare_seconds else 0.001,
        ignored=tuple(limit.ignored),
        exhausted=exhausted(headers, _REMAINING),
        remaining_requests=count_left(headers.get("x-ratelimit-remaining-requests")) if requests_known else None,
        remaining_tokens=count_left(headers.get("x-ratelimit-remaining-tokens")) if tokens_known else None,
        unknown=tuple(unknown),
    )


#: The endpoints (by path) whose bodies take a `service_tier`: Flex and Priority processing are for these alone.
TIERED_ENDPOINTS = frozenset({"chat/completions", "responses"})


def is_flex(body: Mapping[str, object]) -> bool:
    """The request asks for Flex processing."""
    return body.get("service_tier") == FLEX_TIER


def with_service_tier(body: dict[str, object], tier: str | None) -> dict[str, object]:
    """The body with `service_tier` set to `tier` when it sets none of its own (a line's own choice stands)."""
    if tier is None or "service_tier" in body:
        return body
    return {**body, "service_tier": tier}


def _duration(text: str | None) -> float | None:
    return parse_duration(text.strip()) if text else None


#: What its error bodies say (`{"error": {"message", "type", "code"}}`).
ERRORS = ErrorDialect(
    relayed_status={"invalid_api_key": 401, "rate_limit_exceeded": 429, "invalid_request_error": 400, "requests": 429, "tokens": 429},
    # Sent with 429 (quota) but also 400/403 (billing limit, region): any 4xx with one of these stops the run.
    stop_run_codes=frozenset({
        "insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached", "billing_not_active", "access_terminated",
        "unsupported_country_region_territory",
    }),
    # A 429 says which limit: type "tokens" and "... on tokens per min (TPM)", or "requests" and "(RPM)".
    token_limit_types=("tokens",),
    token_limit_words=("tokens per min", "(tpm)"),
    # One request bigger than the whole TPM limit: 'Request too large for gpt-4o ... on tokens per min (TPM): Limit 30000, Requested 36278.'
    too_large_words=("request too large",),
    wait_words=("try again in",),  # "Please try again in 1.574s"
    no_capacity_codes=frozenset({NO_CAPACITY_CODE}),  # Flex: "Resource unavailable. Please try again later."
)

PROVIDER = Provider(
    name="OpenAI",
    serves=serves,
    key_variable=API_KEY_VARIABLE,
    auth_headers=auth_headers,
    own_hosts=(HOST,),
    parse_rate_limits=parse_rate_limits,
    rate_limit_headers=_HEADERS,
    limit_floors=_LIMIT_FLOORS,
    errors=ERRORS,
    probe_bodies={
        "chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
        "completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi", "max_tokens": 1},
        "embeddings": {"model": "text-embedding-3-small", "input": "Hi"},
        "responses": {"model": "gpt-4o-mini", "input": "Hi", "max_output_tokens": 16},  # the API's smallest allowed
    },
    price_provider="openai",
)
