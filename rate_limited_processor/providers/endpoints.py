"""Which API endpoint a URL names, and what a request body must carry to be worth sending.

Pure logic: no I/O. The endpoint decides how tokens are estimated and which fields are required, so a
line that could never succeed is recorded as a failure instead of being paid for.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..base.errors import InvalidRequest, UnsupportedEndpoint
from . import anthropic, gemini
from .anthropic import is_anthropic_url
from .azure import is_azure_url

if TYPE_CHECKING:
    from ..base.models import APIRequest

__all__ = [
    "likely_url",
    "Endpoint",
    "UnsupportedEndpoint",
    "endpoint_from_url",
    "missing_field_reason",
    "is_azure_url",
    "is_anthropic_url",
    "resolve_url",
    "check_request",
]


class Endpoint(enum.Enum):
    CHAT_COMPLETIONS = "chat/completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"
    #: Anthropic's Messages API (`https://api.anthropic.com/v1/messages`).
    MESSAGES = "messages"
    #: Gemini's native API (`.../v1beta/models/MODEL:generateContent`): the path names the model, after a colon.
    GENERATE_CONTENT = gemini.METHOD

    # Members are singletons, compared by identity: hash them so, in C (Enum's own __hash__ is a Python call,
    # and every request looks its endpoint up in a table or two).
    __hash__ = object.__hash__

    @property
    def is_anthropic(self) -> bool:
        """Anthropic's API: its key header, its version header, its three limits (requests, input and output tokens)."""
        return self is _MESSAGES

    def charged_tokens(self, prompt_tokens: int, completion_tokens: int) -> int:
        """What a request counts against the tokens-per-minute limit when sent: OpenAI's prompt plus its completion
        budget; Anthropic's input-token limit counts the prompt alone (its output tokens are limited apart)."""
        return prompt_tokens if self is _MESSAGES or self is _GENERATE_CONTENT else prompt_tokens + completion_tokens

    def reserved_output(self, completion_tokens: int) -> int:
        """What a request counts against an output-token limit when sent: Anthropic's whole completion budget
        (`max_tokens`, refunded to what the answer used when it comes back); 0 where no such limit exists."""
        return completion_tokens if self is _MESSAGES else 0

    @property
    def batch_api_refusal(self) -> str | None:
        """Why OpenAI's Files and Batches API (`--mode batch`) cannot take this endpoint's requests; None when it can."""
        if self is _GENERATE_CONTENT:
            return gemini.PROVIDER.batch_api_refusal
        return anthropic.FILES_BATCHES_REFUSAL if self is _MESSAGES else None

    @property
    def required_field(self) -> str:
        """The body field without which the API rejects the request."""
        return _REQUIRED_FIELD[self]


# Enum members read per request, as globals: on Python 3.11 reading one off its class (EnumType's __getattr__ hook) costs a few times more.
_CHAT_COMPLETIONS, _MESSAGES, _GENERATE_CONTENT = Endpoint.CHAT_COMPLETIONS, Endpoint.MESSAGES, Endpoint.GENERATE_CONTENT

_REQUIRED_FIELD = {
    Endpoint.CHAT_COMPLETIONS: "messages",
    Endpoint.COMPLETIONS: "prompt",
    Endpoint.EMBEDDINGS: "input",
    Endpoint.RESPONSES: "input",
    Endpoint.MESSAGES: "messages",
    Endpoint.GENERATE_CONTENT: "contents",
}

# Longest suffix first, so ".../chat/completions" is not taken for ".../completions".
_SUFFIXES = sorted(Endpoint, key=lambda endpoint: len(endpoint.value), reverse=True)


def endpoint_from_url(url: str) -> Endpoint:
    """The endpoint a request URL points at, for OpenAI, Azure and OpenAI-compatible servers alike.

    >>> endpoint_from_url("https://api.openai.com/v1/chat/completions")
    <Endpoint.CHAT_COMPLETIONS: 'chat/completions'>
    >>> endpoint_from_url("https://x.openai.azure.com/openai/deployments/emb/embeddings?api-version=2024-10-21")
    <Endpoint.EMBEDDINGS: 'embeddings'>
    """
    path = urlsplit(url).path.rstrip("/")
    if path.endswith(":" + _GENERATE_CONTENT.value):
        return _GENERATE_CONTENT
    for endpoint in _SUFFIXES:
        if path == endpoint.value or path.endswith("/" + endpoint.value):
            return endpoint
    supported = ", ".join(f":{e.value}" if e is _GENERATE_CONTENT else f"/{e.value}" for e in Endpoint)
    raise UnsupportedEndpoint(f"cannot estimate token cost for {path or url!r}: the URL must end in one of {supported}")


def resolve_url(request_url: str, url: str | None) -> str:
    """The URL to POST to: `request_url`, or a Batch line's own `url` ("/v1/embeddings") on its host.

    A Batch line's url is relative to the API's root, so it replaces the endpoint part of `request_url`
    (which may also be just the root, "https://api.openai.com/v1"); its query string is kept when the
    line has none (Azure's api-version).

    >>> resolve_url("https://api.openai.com/v1/chat/completions", "/v1/embeddings")
    'https://api.openai.com/v1/embeddings'
    >>> resolve_url("http://127.0.0.1:8000/v1", "/v1/chat/completions")
    'http://127.0.0.1:8000/v1/chat/completions'
    """
    if url is None:
        return request_url
    base = urlsplit(request_url)
    line = urlsplit(url)  # ValueError for a malformed one
    if line.scheme or line.netloc:
        # The key goes wherever the request goes: a line may not send it to another server.
        if (line.scheme, line.netloc) != (base.scheme, base.netloc):
            raise ValueError(f"url {url!r} points at another server than --request_url; a line's url must be relative, like \"/v1/chat/completions\"")
        return url
    root = base.path.rstrip("/")
    for endpoint in _SUFFIXES:
        if root == endpoint.value or root.endswith("/" + endpoint.value):
            root = root[: -len(endpoint.value)].rstrip("/")
            break
    path = "/" + line.path.lstrip("/")
    if root.endswith("/v1") and path.startswith("/v1/"):
        path = path[len("/v1") :]
    return urlunsplit((base.scheme, base.netloc, root + path, line.query or base.query, ""))


def missing_field_reason(endpoint: Endpoint, body: Mapping[str, Any]) -> str | None:
    """Why the API would reject this body out of hand, or None when it has what the endpoint needs."""
    field = endpoint.required_field
    value = body.get(field)
    if value is None:
        return f"missing required field {field!r} for /{endpoint.value}"
    if (endpoint is _CHAT_COMPLETIONS or endpoint is _MESSAGES or endpoint is _GENERATE_CONTENT) and not (isinstance(value, list) and value):
        return f"field {field!r} must be a non-empty list"
    if endpoint is _MESSAGES:
        if not isinstance(body.get("model"), str):
            return "missing required field 'model' for /v1/messages (Anthropic's Messages API names the model in every request)"
        max_tokens = body.get("max_tokens")
        if max_tokens.__class__ is not int or max_tokens < 1:
            return "field 'max_tokens' is required for /v1/messages and must be a positive integer (it is what the output-token limit reserves)"
    return None


#: How a request's tokens are estimated: `TokenEstimator.estimate_parts`, (prompt, completion budget).
Estimate = Callable[[Endpoint, Mapping[str, Any]], tuple[int, int]]


def check_request(request: APIRequest, request_url: str, estimate: Estimate) -> tuple[str, Endpoint, int, int]:
    """Where a request goes, its endpoint, and its estimated prompt tokens and completion budget (what it is
    charged: `Endpoint.charged_tokens`); or InvalidRequest saying why not.

    The one check every request passes before it is sent (and before a dry run counts it).
    """
    try:
        url = resolve_url(request_url, request.url)
        endpoint = cached_endpoint(url)
        reason = missing_field_reason(endpoint, request.body)
        if reason is None:
            return (url, endpoint, *estimate(endpoint, request.body))
    except ValueError as error:  # a malformed or foreign url, an endpoint we cannot estimate, an unreadable body
        reason = str(error)
    raise InvalidRequest(reason)


@functools.lru_cache(maxsize=64)
def cached_endpoint(url: str) -> Endpoint:
    """`endpoint_from_url`, remembered: a run asks the same question once per request."""
    return endpoint_from_url(url)


def likely_url(url: str, *, status: int | None, tls_failed: bool) -> str | None:
    """The URL that was probably meant, when every request to `url` failed the way a common slip makes them fail.

    >>> likely_url("http://127.0.0.1:8000/chat/completions", status=404, tls_failed=False)    # the /v1 left out
    'http://127.0.0.1:8000/v1/chat/completions'
    >>> likely_url("https://127.0.0.1:8000/v1/embeddings", status=None, tls_failed=True)     # a plain-HTTP server
    'http://127.0.0.1:8000/v1/embeddings'
    """
    parts = urlsplit(url)
    if tls_failed and parts.scheme.lower() == "https":
        return urlunsplit(("http", *parts[1:]))
    if status not in (404, 405) or "/v1/" in f"{parts.path}/" or is_azure_url(url):
        return None
    try:
        suffix = "/" + endpoint_from_url(url).value
    except ValueError:
        return None
    if not parts.path.rstrip("/").endswith(suffix):
        return None
    prefix = parts.path.rstrip("/")[: -len(suffix)]
    return urlunsplit(parts._replace(path=f"{prefix}/v1{suffix}"))
