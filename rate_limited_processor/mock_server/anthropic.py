"""The mock's Anthropic Messages API (POST /v1/messages): its key header, its answers, its 429s and headers.

What differs from OpenAI, as Anthropic documents it, and what this module copies:

- The key comes in `x-api-key`, with an `anthropic-version` header; errors read
  `{"type": "error", "error": {"type": "rate_limit_error", "message": ...}}`.
- Three limits: requests, input tokens (ITPM) and output tokens (OTPM) per minute. Output tokens are
  charged at `max_tokens` when the request is admitted and adjusted to what the answer used at its end.
- Headers `anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining,reset}`, the reset an
  RFC 3339 time (whole seconds) when the bucket is full again; every 429 carries `retry-after` (seconds).
- 529 `overloaded_error` when the API as a whole is busy: no one's rate limit, not charged.

Pure: the time is passed in (`wall` is epoch seconds, for the RFC 3339 resets).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from .errors import format_limit
from .rate_limits import RateLimitGate, Rejection
from .reply import Reply, json_reply

__all__ = [
    "ANTHROPIC_VERSION_HEADER",
    "body_problem",
    "headers",
    "invalid_api_key",
    "invalid_request",
    "missing_api_key",
    "message_payload",
    "overloaded",
    "presented_key",
    "rate_limited",
]

ANTHROPIC_VERSION_HEADER = "anthropic-version"
#: What each of the gate's limits is called in Anthropic's headers and messages.
_HEADER_NAMES = {"requests": "requests", "tokens": "input-tokens", "output_tokens": "output-tokens"}
_WORDING = {"requests": "requests", "tokens": "input tokens", "output_tokens": "output tokens"}


def presented_key(request_headers: Mapping[str, str]) -> str | None:
    """The key where Anthropic reads it (`x-api-key`); an OpenAI-style Bearer header is not one."""
    key = request_headers.get("x-api-key")
    return None if key is None else key.strip()


def _error(status: int, type_: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return json_reply(status, {"type": "error", "error": {"type": type_, "message": message}}, headers)


def invalid_api_key() -> Reply:
    return _error(401, "authentication_error", "invalid x-api-key")


def missing_api_key() -> Reply:
    return _error(401, "authentication_error", "x-api-key header is required")


def invalid_request(message: str) -> Reply:
    return _error(400, "invalid_request_error", message)


def overloaded() -> Reply:
    """529: the API is busy for everyone (not this account's limit); retry later."""
    return _error(529, "overloaded_error", "Overloaded")


def rate_limited(rejection: Rejection, *, hint: float | None) -> Reply:
    """429 for a request over one of the three limits, naming it in Anthropic's words; `retry-after` in
    whole seconds (None: a server that says nothing about when)."""
    wording = _WORDING[rejection.limit_name]
    message = (
        f"This request would exceed the rate limit for your organization of {format_limit(rejection.limit)} "
        f"{wording} per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."
    )
    extra = {"retry-after": str(max(1, math.ceil(hint)))} if hint is not None else {}
    return _error(429, "rate_limit_error", message, extra)


def body_problem(body: Any) -> str | None:
    """Why the Messages API would answer 400: it needs a model, a positive `max_tokens`, and messages."""
    if not isinstance(body, Mapping):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return "max_tokens: Field required (a positive integer)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(message, Mapping) for message in messages):
        return "messages: Field required (a non-empty list of objects)"
    if "stream_options" in body:  # OpenAI's; Anthropic refuses fields it does not know
        return "stream_options: Extra inputs are not permitted"
    return None


def output_used(body: Mapping[str, Any], generates: int) -> int:
    """Output tokens an answer uses: what the mock generates, cut off at the request's `max_tokens`."""
    return min(generates, int(body["max_tokens"]))


def message_payload(body: Mapping[str, Any], *, model: str, key: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """The 200 body: a text answer of `output_tokens` tokens (one word each), and its usage."""
    stop_reason = "max_tokens" if output_tokens >= int(body["max_tokens"]) else "end_turn"
    return {
        "id": f"msg_{hashlib.sha256(key.encode()).hexdigest()[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": " ".join(["echo"] * output_tokens)}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def headers(gate: RateLimitGate, now: float, wall: float) -> dict[str, str]:
    """`anthropic-ratelimit-*` for each limit that is set, as the gate stands at `now` (`wall`: the same
    moment in epoch seconds)."""
    stated: dict[str, str] = {}
    for limit in gate.state(now):
        name = _HEADER_NAMES[limit.name]
        full_at = datetime.fromtimestamp(math.ceil(wall + limit.until_full), tz=UTC)
        stated[f"anthropic-ratelimit-{name}-limit"] = format_limit(limit.per_minute)
        stated[f"anthropic-ratelimit-{name}-remaining"] = str(limit.remaining)
        stated[f"anthropic-ratelimit-{name}-reset"] = full_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return stated
