"""Anthropic's Messages API (`https://api.anthropic.com/v1/messages`).

Its key goes in `x-api-key` (read from $ANTHROPIC_API_KEY), and every request names the API version it speaks
(`anthropic-version`). It limits requests, input tokens (ITPM) and output tokens (OTPM) apart, and states them
in `anthropic-ratelimit-{requests,input-tokens,output-tokens}-*` headers, with resets as RFC 3339 times. A
request is charged its prompt against the input-token limit, and reserves its `max_tokens` against the
output-token limit (`Endpoint.charged_tokens`, `token_estimation.output_reservation`). Claude's tokenizer is
not public: its tokens are estimated at one per `CHARACTERS_PER_TOKEN` characters, and the tuner corrects the
pace by what the headers say was spent. Its errors are `{"type": "error", "error": {"type", "message"}}`, an
overloaded API answers 529 `overloaded_error`, and an empty account says so in words. It has no OpenAI Batch API
(its Message Batches API is not spoken here).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from ..base.durations import seconds_until
from .provider import ErrorDialect, Provider
from .rate_limits import (
    MIN_STATED_REQUESTS_PER_MINUTE,
    MIN_STATED_TOKENS_PER_MINUTE,
    RateLimitReport,
    StatedLimits,
    count_left,
    exhausted,
)

__all__ = [
    "PROVIDER", "HOST", "API_KEY_VARIABLE", "VERSION", "CHARACTERS_PER_TOKEN", "serves", "is_anthropic_url", "auth_headers",
    "parse_rate_limits", "states_its_rate_limits", "approximate_tokens", "TOKENIZER_NOTE",
]

#: Its own host: an API root there ("https://api.anthropic.com/v1", for Batch lines naming "/v1/messages") is its too.
HOST = "api.anthropic.com"
#: Where its key is read from when none is given.
API_KEY_VARIABLE = "ANTHROPIC_API_KEY"
#: The Messages API version every request names (a --header of the same name overrides it).
VERSION = "2023-06-01"
#: Its tokenizer is not public: a token per this many characters, the rule of thumb.
CHARACTERS_PER_TOKEN = 4
#: Said once per run when its tokens are estimated.
TOKENIZER_NOTE = (
    f"Claude's tokenizer is not public: input tokens are estimated at 1 per {CHARACTERS_PER_TOKEN} characters; "
    "the pace is corrected by what Anthropic's rate-limit headers say was spent"
)

_PREFIX = "anthropic-ratelimit-"
_LIMIT_FLOORS = {
    f"{_PREFIX}requests-limit": MIN_STATED_REQUESTS_PER_MINUTE,
    f"{_PREFIX}input-tokens-limit": MIN_STATED_TOKENS_PER_MINUTE,
    f"{_PREFIX}output-tokens-limit": MIN_STATED_TOKENS_PER_MINUTE,
}
_REMAINING = tuple((f"{_PREFIX}{name}-remaining", f"{_PREFIX}{name}-limit") for name in ("requests", "input-tokens", "output-tokens"))
_HEADERS = frozenset((
    *(f"{_PREFIX}{name}" for name in ("requests-limit", "input-tokens-limit", "output-tokens-limit", "requests-reset", "input-tokens-reset")),
    *(remaining for remaining, _ in _REMAINING),
))


def serves(url: str) -> bool:
    """Any URL whose path ends in /v1/messages, or any on its host."""
    parts = urlsplit(url)
    return parts.path.rstrip("/").endswith("/v1/messages") or parts.hostname == HOST


#: The name earlier releases had (`endpoints.is_anthropic_url`).
is_anthropic_url = serves


def auth_headers(key: str | None) -> dict[str, str]:
    headers = {"x-api-key": key} if key is not None else {}
    headers["anthropic-version"] = VERSION
    return headers


def states_its_rate_limits(headers: Mapping[str, str]) -> bool:
    """The answer carries its rate-limit headers (read as its, whatever the URL: a gateway may front it)."""
    return any(name.startswith(_PREFIX) for name in headers)


def parse_rate_limits(headers: Mapping[str, str], now: float | None = None) -> RateLimitReport:
    """Its headers; resets are RFC 3339 times, read relative to `now` (epoch seconds, default the wall clock)."""
    at = time.time() if now is None else now
    limit = StatedLimits(headers, _LIMIT_FLOORS)
    return RateLimitReport(
        limit_requests=limit(f"{_PREFIX}requests-limit"),
        limit_tokens=limit(f"{_PREFIX}input-tokens-limit"),
        limit_output_tokens=limit(f"{_PREFIX}output-tokens-limit"),
        reset_requests=seconds_until(headers.get(f"{_PREFIX}requests-reset"), at),
        reset_tokens=seconds_until(headers.get(f"{_PREFIX}input-tokens-reset"), at),
        reset_resolution=1.0,
        ignored=tuple(limit.ignored),
        exhausted=exhausted(headers, _REMAINING),
        remaining_output_tokens=count_left(headers.get(f"{_PREFIX}output-tokens-remaining")),
        remaining_requests=count_left(headers.get(f"{_PREFIX}requests-remaining")),
        remaining_tokens=count_left(headers.get(f"{_PREFIX}input-tokens-remaining")),
    )


def approximate_tokens(text: str) -> int:
    """Its tokens in a text, estimated: one per `CHARACTERS_PER_TOKEN` characters, rounded up."""
    return -(-len(text) // CHARACTERS_PER_TOKEN)


ERRORS = ErrorDialect(
    relayed_status={"authentication_error": 401, "permission_error": 403, "rate_limit_error": 429, "overloaded_error": 529, "api_error": 500},
    stop_run_words=("credit balance is too low",),  # "Your credit balance is too low to access the Anthropic API."
    token_limit_words=("input tokens",),
    output_token_words=("output tokens",),  # "... output tokens per minute"
)

PROVIDER = Provider(
    name="Anthropic",
    serves=serves,
    key_variable=API_KEY_VARIABLE,
    auth_headers=auth_headers,
    own_hosts=(HOST,),
    parse_rate_limits=parse_rate_limits,
    rate_limit_headers=_HEADERS,
    limit_floors=_LIMIT_FLOORS,
    errors=ERRORS,
    claims_rate_limit_headers=states_its_rate_limits,
    probe_bodies={"messages": {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}},
    limits_output_tokens=True,
    batch_api_refusal="Anthropic's /v1/messages is not an endpoint of OpenAI's Batch API (use --mode online)",
    price_provider="anthropic",
)
