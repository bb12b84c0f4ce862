"""Error answers, word for word as OpenAI (and Azure, and a load balancer) send them.

Clients decide what to do from these bodies (retry a "requests" 429, stop on "insufficient_quota", never
retry "Request too large"), so the mock copies their shapes, types and codes exactly. Pure: each function
returns a `Reply`.
"""

from __future__ import annotations

import math
from typing import Literal

from ..providers.endpoints import Endpoint
from .config import ORGANIZATION
from .durations import ceil_milliseconds, go_duration
from .reply import HTML, Reply, json_reply

__all__ = [
    "LimitName",
    "format_limit",
    "mask_key",
    "invalid_request",
    "invalid_json",
    "invalid_api_key",
    "missing_api_key",
    "rate_limited",
    "request_too_large",
    "insufficient_quota",
    "flex_unavailable",
    "server_error",
    "overloaded",
    "html_bad_gateway",
    "html_gateway_timeout",
    "html_too_many_requests",
    "azure_rate_limited",
    "not_found",
    "DEFAULT_AZURE_API_VERSION",
]

LimitName = Literal["requests", "tokens", "output_tokens"]

#: Characters of a key shown at each end when it is quoted back ("sk-ab***yz"), as OpenAI does.
KEY_HEAD_SHOWN = 5
KEY_TAIL_SHOWN = 2
#: Keys shorter than this are masked entirely: showing 7 characters of an 8-character key shows the key.
KEY_MIN_LENGTH_TO_SHOW = 4 * (KEY_HEAD_SHOWN + KEY_TAIL_SHOWN)
_MASK = "***"

_RATE_LIMITS_URL = "https://platform.openai.com/account/rate-limits"
_LIMIT_WORDING: dict[LimitName, str] = {
    "requests": "requests per min (RPM)",
    "tokens": "tokens per min (TPM)",
    "output_tokens": "output tokens per min (OTPM)",
}
#: What Azure calls each endpoint's operation in its 429 message.
_AZURE_OPERATIONS = {
    Endpoint.CHAT_COMPLETIONS: "ChatCompletions_Create",
    Endpoint.COMPLETIONS: "Completions_Create",
    Endpoint.EMBEDDINGS: "Embeddings_Create",
    Endpoint.RESPONSES: "Responses_Create",
}
DEFAULT_AZURE_API_VERSION = "2024-10-21"
#: The seconds Azure's token-limit 429 asks clients to wait.
AZURE_RETRY_AFTER_SECONDS = 1

_TOO_MANY_REQUESTS_HTML = (
    b"<html>\r\n<head><title>429 Too Many Requests</title></head>\r\n<body>\r\n"
    b"<center><h1>429 Too Many Requests</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
_GATEWAY_TIMEOUT_HTML = (
    b"<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n"
    b"<center><h1>504 Gateway Time-out</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


def _error(status: int, message: str, type_: str, code: str | None, param: str | None = None) -> Reply:
    return json_reply(status, {"error": {"message": message, "type": type_, "param": param, "code": code}})


def format_limit(value: float) -> str:
    """Limits print as integers when they are whole ("500", not "500.0"), in full otherwise."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def mask_key(key: str) -> str:
    """A key as it may be quoted back: its first and last few characters only, or nothing if it is short."""
    if len(key) < KEY_MIN_LENGTH_TO_SHOW:
        return _MASK
    return f"{key[:KEY_HEAD_SHOWN]}{_MASK}{key[-KEY_TAIL_SHOWN:]}"


def invalid_request(message: str, param: str | None = None) -> Reply:
    """400 for a body the API cannot use."""
    return _error(400, message, "invalid_request_error", None, param)


def invalid_json() -> Reply:
    """400 for a body that is not JSON at all."""
    return invalid_request(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
        "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
    )


def invalid_api_key(provided: str) -> Reply:
    """401 for a wrong key, quoting it masked (never whole: it may be a real key for something else)."""
    return _error(
        401,
        f"Incorrect API key provided: {mask_key(provided)}. "
        "You can find your API key at https://platform.openai.com/account/api-keys.",
        "invalid_request_error",
        "invalid_api_key",
    )


def missing_api_key() -> Reply:
    """401 for a request with no key at all (same type and code as a wrong key, so clients treat them alike)."""
    return _error(
        401,
        "You didn't provide an API key. You need to provide your API key in an Authorization header using "
        "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "invalid_request_error",
        "invalid_api_key",
    )


def rate_limited(
    limit_name: LimitName,
    *,
    model: str,
    limit: float,
    used: float,
    requested: float,
    wait: float | None,
    retry_after_header: bool = False,
) -> Reply:
    """429 for a request that would overrun the RPM or TPM limit now, and fits after `wait` seconds
    (None: a server that says nothing about when)."""
    hint = f"Please try again in {go_duration(wait)}. " if wait is not None else ""
    message = (
        f"Rate limit reached for {model} in organization {ORGANIZATION} on {_LIMIT_WORDING[limit_name]}: "
        f"Limit {format_limit(limit)}, Used {format_limit(used)}, Requested {format_limit(requested)}. "
        f"{hint}Visit {_RATE_LIMITS_URL} to learn more."
    )
    reply = _error(429, message, limit_name, "rate_limit_exceeded")
    if retry_after_header and wait is not None:
        reply = reply.with_headers(
            {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(ceil_milliseconds(wait))}
        )
    return reply


def request_too_large(*, model: str, limit: float, requested: float) -> Reply:
    """429 for a request bigger than the whole TPM limit: it can never succeed, however long one waits."""
    message = (
        f"Request too large for {model} in organization {ORGANIZATION} on {_LIMIT_WORDING['tokens']}: "
        f"Limit {format_limit(limit)}, Requested {format_limit(requested)}. The input or output tokens must be reduced "
        f"in order to run successfully. Visit {_RATE_LIMITS_URL} to learn more."
    )
    return _error(429, message, "tokens", "rate_limit_exceeded")


def insufficient_quota() -> Reply:
    """429 that is not a rate limit: the account is out of credit, and retrying cannot help."""
    return _error(
        429,
        "You exceeded your current quota, please check your plan and billing details. For more information on "
        "this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
        "insufficient_quota",
        "insufficient_quota",
    )


def flex_unavailable() -> Reply:
    """429 for a Flex request when Flex has no capacity now: not the account's rate limit, and not charged (OpenAI's
    Flex guide: "429 Resource Unavailable", code `resource_unavailable`; retry later, or send at the default tier)."""
    return _error(429, "Resource unavailable. Please try again later.", "invalid_request_error", "resource_unavailable")


def server_error() -> Reply:
    """500, as OpenAI words its transient internal errors."""
    return _error(
        500,
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
        None,
    )


def overloaded() -> Reply:
    """503, OpenAI's "try again later"."""
    return _error(503, "The engine is currently overloaded, please try again later.", "server_error", None)


def html_too_many_requests() -> Reply:
    """429 with an HTML page and nothing else: what nginx's limit_req (and many gateways) answer."""
    return Reply(429, _TOO_MANY_REQUESTS_HTML, HTML, {})


def html_bad_gateway() -> Reply:
    """502 with an HTML page: what a proxy in front of the API sends, which a JSON-only client chokes on."""
    return Reply(502, _BAD_GATEWAY_HTML, HTML, {})


def html_gateway_timeout() -> Reply:
    """504 with nginx's HTML page: a gateway that stopped waiting for the API (`proxy_read_timeout`), which may
    have done the work all the same."""
    return Reply(504, _GATEWAY_TIMEOUT_HTML, HTML, {})


def azure_rate_limited(endpoint: Endpoint, api_version: str = DEFAULT_AZURE_API_VERSION) -> Reply:
    """Azure's 429: a different body shape (no "type", code "429") and the wait in `retry-after`."""
    message = (
        f"Requests to the {_AZURE_OPERATIONS[endpoint]} Operation under Azure OpenAI API version {api_version} "
        "have exceeded token rate limit of your current OpenAI S0 pricing tier. "
        f"Please retry after {AZURE_RETRY_AFTER_SECONDS} second."
    )
    return json_reply(
        429, {"error": {"code": "429", "message": message}}, {"retry-after": str(AZURE_RETRY_AFTER_SECONDS)}
    )


def not_found(path: str) -> Reply:
    """404 for a path the mock does not serve."""
    return _error(404, f"Invalid URL (POST {path})", "invalid_request_error", None)
