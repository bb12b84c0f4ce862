"""Successful answers in OpenAI's shapes, computed from the request alone, so a test can match them up.

Every text output is "echo: " + the request's last input text, and every embedding is a hash of its input
(8 numbers, or as many as the request's `dimensions` asks for).
A test that sent `body` can therefore check the answer it got with::

    assert echo_of(endpoint, response_json) == expected_echo(endpoint, body)

`usage` is a characters / 4 approximation (the mock is not a tokenizer); ids are derived from the request
so identical requests get identical answers. Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from typing import Any

from ..providers.endpoints import Endpoint, endpoint_from_url, missing_field_reason

__all__ = [
    "ECHO_PREFIX",
    "EMBEDDING_DIMENSIONS",
    "MAX_CHOICES",
    "as_endpoint",
    "body_problem",
    "expected_echo",
    "echo_of",
    "response_matches",
    "embedding_for",
    "success_payload",
]

#: What every generated text starts with.
ECHO_PREFIX = "echo: "
#: Length of a mock embedding when the request asks for no `dimensions` (small: they are hashes, not meanings).
EMBEDDING_DIMENSIONS = 8
#: The most `dimensions` the mock answers (OpenAI's largest model has 3,072).
MAX_DIMENSIONS = 8_192
#: The most choices (`n`) the API allows per request.
MAX_CHOICES = 128
#: `created` in every answer: a fixed time keeps answers byte-for-byte reproducible.
CREATED = 1_700_000_000
#: Characters per token in the mock's `usage` figures (OpenAI's rule of thumb).
_CHARS_PER_TOKEN = 4
_BYTES_PER_COMPONENT = 4
_COMPONENT_SCALE = 2**32
_EMBEDDING_DECIMALS = 6

Echo = tuple[Any, ...]


def as_endpoint(endpoint: Endpoint | str) -> Endpoint:
    """Accept an Endpoint, its value ("chat/completions") or a whole URL, as tests find handiest."""
    if isinstance(endpoint, Endpoint):
        return endpoint
    try:
        return Endpoint(endpoint.strip("/"))
    except ValueError:
        return endpoint_from_url(endpoint)


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _text_of_content(content: Any) -> str:
    """Message content is a string or a list of parts; its text parts, one per line, are its text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _text_of_item(item: Any) -> str:
    """A chat message or a Responses input item: its content's text, or the item itself if it is text."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        return _text_of_content(item.get("content"))
    return ""


def _prompts(prompt: Any) -> list[Any]:
    """Completions and embeddings take one input or a list: a string, a token array, or a list of either."""
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and all(isinstance(token, int) for token in prompt):
        return [prompt]  # one token array
    if isinstance(prompt, list):
        return list(prompt)
    return [prompt]


def _prompt_text(prompt: Any) -> str:
    return prompt if isinstance(prompt, str) else _compact(prompt)


def _choice_count(body: Mapping[str, Any]) -> int:
    n = body.get("n")
    return 1 if n is None else n


def body_problem(endpoint: Endpoint, body: Any) -> str | None:
    """Why the API would answer 400, or None when the mock can answer this body."""
    if not isinstance(body, Mapping):
        return "The request body must be a JSON object."
    missing = missing_field_reason(endpoint, body)
    if missing is not None:
        return missing
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES):
        return f"Invalid 'n': expected an integer between 1 and {MAX_CHOICES}, got {n!r}."
    field = endpoint.required_field
    value = body[field]
    if endpoint is Endpoint.CHAT_COMPLETIONS and not all(isinstance(message, Mapping) for message in value):
        return "Invalid type for 'messages': every message must be an object."
    if endpoint is not Endpoint.CHAT_COMPLETIONS and not isinstance(value, (str, list)):
        return f"Invalid type for {field!r}: expected a string or an array, got {type(value).__name__}."
    if endpoint in (Endpoint.COMPLETIONS, Endpoint.EMBEDDINGS, Endpoint.RESPONSES) and value in ("", []):
        return f"Invalid {field!r}: it must not be empty."
    dimensions = body.get("dimensions")
    valid_dimensions = isinstance(dimensions, int) and not isinstance(dimensions, bool) and 1 <= dimensions <= MAX_DIMENSIONS
    if endpoint is Endpoint.EMBEDDINGS and dimensions is not None and not valid_dimensions:
        return f"Invalid 'dimensions': expected an integer between 1 and {MAX_DIMENSIONS}, got {dimensions!r}."
    return None


def embedding_for(item: Any, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """The mock's embedding of one input: `dimensions` numbers in [-1, 1] from a hash of it.

    The first 8 come from the hash itself. Beyond them, the numbers are a stretch of one fixed table, from
    where the hash says: a 1,536-number answer costs a list slice, so the mock stays faster than its client.
    """
    digest = hashlib.sha256(_prompt_text(item).encode()).digest()
    starts = range(0, EMBEDDING_DIMENSIONS * _BYTES_PER_COMPONENT, _BYTES_PER_COMPONENT)
    chunks = (digest[start : start + _BYTES_PER_COMPONENT] for start in starts)
    head = [round(int.from_bytes(chunk, "big") / _COMPONENT_SCALE * 2 - 1, _EMBEDDING_DECIMALS) for chunk in chunks]
    if dimensions <= EMBEDDING_DIMENSIONS:
        return head[:dimensions]
    start = int.from_bytes(digest[:_BYTES_PER_COMPONENT], "big") % MAX_DIMENSIONS
    return head + _TABLE_TWICE[start : start + dimensions - EMBEDDING_DIMENSIONS]


_TABLE = [round(value, _EMBEDDING_DECIMALS) for value in (random.Random(0).uniform(-1, 1) for _ in range(MAX_DIMENSIONS))]
_TABLE_TWICE = _TABLE + _TABLE


def _dimensions(body: Mapping[str, Any]) -> int:
    dimensions = body.get("dimensions")
    return EMBEDDING_DIMENSIONS if dimensions is None else int(dimensions)


def expected_echo(endpoint: Endpoint | str, body: Mapping[str, Any]) -> Echo:
    """What the mock answers to `body`: one text per choice, or one vector per embedding input.

    Chat and Responses: "echo: " + the last message's text, `n` times. Completions: "echo: " + each prompt,
    `n` times each. Embeddings: `embedding_for` each input, as tuples.
    """
    endpoint = as_endpoint(endpoint)
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        return (ECHO_PREFIX + _text_of_item(body["messages"][-1]),) * _choice_count(body)
    if endpoint is Endpoint.COMPLETIONS:
        n = _choice_count(body)
        return tuple(ECHO_PREFIX + _prompt_text(prompt) for prompt in _prompts(body["prompt"]) for _ in range(n))
    if endpoint is Endpoint.EMBEDDINGS:
        return tuple(tuple(embedding_for(item, _dimensions(body))) for item in _prompts(body["input"]))
    value = body["input"]
    last = value if isinstance(value, str) else value[-1]
    return (ECHO_PREFIX + _text_of_item(last),)


def echo_of(endpoint: Endpoint | str, response: Mapping[str, Any]) -> Echo:
    """The same tuple as `expected_echo`, read back out of a response body."""
    endpoint = as_endpoint(endpoint)
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        return tuple(choice["message"]["content"] for choice in response["choices"])
    if endpoint is Endpoint.COMPLETIONS:
        return tuple(choice["text"] for choice in response["choices"])
    if endpoint is Endpoint.EMBEDDINGS:
        return tuple(tuple(item["embedding"]) for item in response["data"])
    return tuple(
        part["text"]
        for item in response["output"]
        if item.get("type") == "message"
        for part in item["content"]
        if part.get("type") == "output_text"
    )


def response_matches(endpoint: Endpoint | str, body: Mapping[str, Any], response: Mapping[str, Any]) -> bool:
    """True when `response` is the mock's answer to `body` (False for an error body or another request's)."""
    try:
        return echo_of(endpoint, response) == expected_echo(endpoint, body)
    except (KeyError, TypeError, IndexError, AttributeError):
        return False


def _approx_tokens(text: str) -> int:
    return -(-len(text) // _CHARS_PER_TOKEN)


def _input_text(endpoint: Endpoint, body: Mapping[str, Any]) -> str:
    """All the text the request sends, for its `usage` figure."""
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        return "\n".join(_text_of_item(message) for message in body["messages"])
    if endpoint is Endpoint.RESPONSES:
        value = body["input"]
        items = [value] if isinstance(value, str) else value
        instructions = body.get("instructions")
        prefix = [instructions] if isinstance(instructions, str) else []
        return "\n".join(prefix + [_text_of_item(item) for item in items])
    field = endpoint.required_field
    return "\n".join(_prompt_text(prompt) for prompt in _prompts(body[field]))


def _id(prefix: str, key: str) -> str:
    return f"{prefix}-{key[:24]}"


def success_payload(endpoint: Endpoint, body: Mapping[str, Any], *, model: str, key: str) -> dict[str, Any]:
    """The 200 body for a valid request (`body_problem` returned None). `key` identifies the request. A chat or
    Responses answer names the `service_tier` that served it, when the request asked for one ("auto": "default")."""
    payload = _payload(endpoint, body, model=model, key=key)
    tier = body.get("service_tier")
    if isinstance(tier, str) and endpoint in (Endpoint.CHAT_COMPLETIONS, Endpoint.RESPONSES):
        payload["service_tier"] = "default" if tier == "auto" else tier
    return payload


def _payload(endpoint: Endpoint, body: Mapping[str, Any], *, model: str, key: str) -> dict[str, Any]:
    echo = expected_echo(endpoint, body)
    prompt_tokens = _approx_tokens(_input_text(endpoint, body))
    if endpoint is Endpoint.EMBEDDINGS:
        return {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": list(vector)} for i, vector in enumerate(echo)],
            "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
        }
    completion_tokens = sum(_approx_tokens(text) for text in echo)
    total = prompt_tokens + completion_tokens
    if endpoint is Endpoint.CHAT_COMPLETIONS:
        return {
            "id": _id("chatcmpl", key),
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
                for i, text in enumerate(echo)
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total},
        }
    if endpoint is Endpoint.COMPLETIONS:
        return {
            "id": _id("cmpl", key),
            "object": "text_completion",
            "created": CREATED,
            "model": model,
            "choices": [
                {"index": i, "text": text, "logprobs": None, "finish_reason": "stop"} for i, text in enumerate(echo)
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total},
        }
    return {
        "id": _id("resp", key),
        "object": "response",
        "created_at": CREATED,
        "status": "completed",
        "model": model,
        "output": [
            {
                "type": "message",
                "id": _id("msg", key),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []} for text in echo],
            }
        ],
        "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens, "total_tokens": total},
    }

