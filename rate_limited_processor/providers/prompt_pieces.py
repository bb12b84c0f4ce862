"""A request body's prompt, flattened for counting: the texts to tokenize and the tokens already known.

Each endpoint's body (chat messages, a Responses input, a completions prompt, embeddings input, Anthropic's
Messages) is walked into pieces: a text still to be tokenized, or a number of tokens known without a tokenizer
(framing per message, media at a flat cost, token-id arrays). `token_estimation` counts the texts with the
model's encoding. Pure: no I/O. A body that is not what its endpoint takes raises `EstimationError`, naming the
field, in JSON's words.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

from ..base.errors import EstimationError
from .endpoints import Endpoint

__all__ = [
    "Piece",
    "checked_pieces",
    "token_input_pieces",
    "require_object",
    "json_kind",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "REPLY_PRIMING_TOKENS",
    "TOOLS_OVERHEAD_TOKENS",
    "LOW_DETAIL_IMAGE_TOKENS",
    "IMAGE_TOKENS",
    "AUDIO_TOKENS",
    "FILE_TOKENS",
]

#: OpenAI's recipe for current chat models: each message is framed as <|start|>{role/name}\n{content}<|end|>\n.
TOKENS_PER_MESSAGE = 3
#: A message's `name` costs one token beyond its text.
TOKENS_PER_NAME = 1
#: Every reply is primed with <|start|>assistant<|message|>.
REPLY_PRIMING_TOKENS = 3
#: Tool definitions are rendered into a preamble the model reads. We count each definition as compact JSON,
#: which runs a little longer than the real rendering, plus this once for the preamble's own text.
TOOLS_OVERHEAD_TOKENS = 12

#: An image at detail "low": the flat cost the API documents for gpt-4o.
LOW_DETAIL_IMAGE_TOKENS = 85
#: An image at detail "high" or "auto": we cannot see its size without fetching it, so we assume 1024x1024,
#: which is 4 tiles x 170 + 85 on gpt-4o.
IMAGE_TOKENS = 765
#: An audio part: we cannot decode its length, so we assume a minute of speech at ~10 tokens a second.
AUDIO_TOKENS = 600
#: A file part (usually a PDF, read as text plus a picture of each page): a guess for a few pages.
FILE_TOKENS = 1_000

#: Identifiers and bookkeeping: never rendered into the prompt as text.
_UNCOUNTED_KEYS = frozenset({"type", "id", "call_id", "tool_call_id", "status", "encrypted_content"})
#: Content part type -> the field holding its text.
_TEXT_PARTS = MappingProxyType(
    {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}
)
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})  # "image": Anthropic's block
_AUDIO_PARTS = frozenset({"input_audio"})
_FILE_PARTS = frozenset({"file", "input_file", "document"})  # "document": Anthropic's block
_MEDIA_PARTS = _IMAGE_PARTS | _AUDIO_PARTS | _FILE_PARTS
_TOKEN_INPUT_SHAPES = "a string, a list of strings, a list of token ids or a list of token-id lists"

#: A prompt flattened for counting: text still to be tokenized, or a number of tokens already known.
Piece = str | int


def checked_pieces(endpoint: Endpoint, body: Mapping[str, Any]) -> Iterator[Piece]:
    require_object(body)
    try:
        yield from _PIECES[endpoint](body)
    except RecursionError:
        raise EstimationError("the request body is nested too deeply to read") from None


def require_object(body: object) -> None:
    if body.__class__ is not dict and not isinstance(body, Mapping):  # a dict, almost always: no ABC check
        raise EstimationError(f"the request body must be an object, not {json_kind(body)}")


def _chat_pieces(body: Mapping[str, Any]) -> Iterator[Piece]:
    """OpenAI's recipe: framing per message, the text of each field, reply priming; tools on top."""
    yield from _conversation_pieces(body)
    yield from _tool_pieces(body, "functions")


def _conversation_pieces(body: Mapping[str, Any]) -> Iterator[Piece]:
    """Each message of `messages`, the reply priming, and the tools: chat's and Anthropic's alike."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise EstimationError(f"'messages' must be a list of messages, not {json_kind(messages)}")
    for index, message in enumerate(messages):
        yield from _message_pieces(message, f"messages[{index}]")
    yield REPLY_PRIMING_TOKENS
    yield from _tool_pieces(body, "tools")


def _responses_pieces(body: Mapping[str, Any]) -> Iterator[Piece]:
    """/responses renders to the same chat format: instructions become a developer message, a string input
    a user message, and every other input item (tool call, tool output, reasoning summary) a message of its own.
    """
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise EstimationError(f"'instructions' must be a string, not {json_kind(instructions)}")
        yield TOKENS_PER_MESSAGE
        yield "developer"
        yield instructions
    items = body.get("input")
    if isinstance(items, str):
        yield TOKENS_PER_MESSAGE
        yield "user"
        yield items
    elif isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, Mapping) and "role" in item:
                yield from _message_pieces(item, f"input[{index}]")
            elif isinstance(item, Mapping):
                yield TOKENS_PER_MESSAGE
                yield from _walk(item)
            else:
                raise EstimationError(f"input[{index}] must be an object, not {json_kind(item)}")
    else:
        raise EstimationError(f"'input' must be a string or a list of items, not {json_kind(items)}")
    yield REPLY_PRIMING_TOKENS
    yield from _tool_pieces(body, "tools")


def _completions_pieces(body: Mapping[str, Any]) -> Iterator[Piece]:
    yield from token_input_pieces(body.get("prompt"), "prompt")
    suffix = body.get("suffix")
    if suffix is not None:
        if not isinstance(suffix, str):
            raise EstimationError(f"'suffix' must be a string, not {json_kind(suffix)}")
        yield suffix


def _messages_pieces(body: Mapping[str, Any]) -> Iterator[Piece]:
    """Anthropic's Messages API: the system prompt (a string or text blocks), each message, and the tools."""
    system = body.get("system")
    if system is not None:
        yield TOKENS_PER_MESSAGE
        yield from _content_pieces(system, "system")
    yield from _conversation_pieces(body)


def _generate_content_pieces(body: Mapping[str, Any]) -> Iterator[Piece]:
    """Gemini's: the system instruction and each of `contents` (a role and its parts), and the tools. Inline
    or uploaded media (`inlineData`, `fileData`) count a flat image's tokens, not their base64 text."""
    contents = body.get("contents")
    if not isinstance(contents, list):
        raise EstimationError(f"'contents' must be a list of contents, not {json_kind(contents)}")
    system = body.get("systemInstruction")
    for index, content in enumerate([system, *contents] if system is not None else contents):
        if not isinstance(content, Mapping):
            raise EstimationError(f"contents[{index}] must be an object, not {json_kind(content)}")
        yield TOKENS_PER_MESSAGE
        parts = content.get("parts")
        for part in parts if isinstance(parts, list) else [parts]:
            if isinstance(part, Mapping) and ("inlineData" in part or "fileData" in part):
                yield IMAGE_TOKENS
            else:
                yield from _walk(part)
    yield from _tool_pieces(body, "tools")


def _embeddings_pieces(body: Mapping[str, Any]) -> Iterator[Piece]:
    return token_input_pieces(body.get("input"), "input")


_PIECES: Mapping[Endpoint, Callable[[Mapping[str, Any]], Iterable[Piece]]] = MappingProxyType(
    {
        Endpoint.CHAT_COMPLETIONS: _chat_pieces,
        Endpoint.COMPLETIONS: _completions_pieces,
        Endpoint.EMBEDDINGS: _embeddings_pieces,
        Endpoint.RESPONSES: _responses_pieces,
        Endpoint.MESSAGES: _messages_pieces,
        Endpoint.GENERATE_CONTENT: _generate_content_pieces,
    }
)


def _message_pieces(message: object, where: str) -> Iterator[Piece]:
    if not isinstance(message, Mapping):
        raise EstimationError(f"{where} must be an object, not {json_kind(message)}")
    yield TOKENS_PER_MESSAGE
    for key, value in message.items():
        if key == "content":
            yield from _content_pieces(value, f"{where}.content")
        elif key == "role":
            if not isinstance(value, str):
                raise EstimationError(f"{where}.role must be a string, not {json_kind(value)}")
            yield value
        elif key == "name" and value is not None:
            if not isinstance(value, str):
                raise EstimationError(f"{where}.name must be a string, not {json_kind(value)}")
            yield value
            yield TOKENS_PER_NAME
        elif key == "tool_calls" and not isinstance(value, list | None):
            raise EstimationError(f"{where}.tool_calls must be a list, not {json_kind(value)}")
        elif key not in _UNCOUNTED_KEYS:
            # tool_calls, function_call and the rest: their text (function names, arguments) counts.
            yield from _walk(value)


def _content_pieces(content: object, where: str) -> Iterator[Piece]:
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for index, part in enumerate(content):
            yield from _part_pieces(part, f"{where}[{index}]")
    elif content is not None:
        raise EstimationError(f"{where} must be a string, a list of parts or null, not {json_kind(content)}")


def _part_pieces(part: object, where: str) -> Iterator[Piece]:
    """A content part: its text, a flat cost for media we cannot measure without fetching, else its strings."""
    if not isinstance(part, Mapping):
        raise EstimationError(f"{where} must be an object, not {json_kind(part)}")
    kind = _part_type(part)
    text_field = _TEXT_PARTS.get(kind)
    if text_field is not None:
        text = part.get(text_field)
        if not isinstance(text, str):
            raise EstimationError(f"{where}.{text_field} must be a string, not {json_kind(text)}")
        yield text
    elif kind in _IMAGE_PARTS:
        yield LOW_DETAIL_IMAGE_TOKENS if _image_detail(part) == "low" else IMAGE_TOKENS
    elif kind in _AUDIO_PARTS:
        yield AUDIO_TOKENS
    elif kind in _FILE_PARTS:
        yield FILE_TOKENS
    else:
        yield from _walk_mapping(part)


def _part_type(part: Mapping[str, Any]) -> str:
    kind = part.get("type")
    return kind if isinstance(kind, str) else ""


def _image_detail(part: Mapping[str, Any]) -> object:
    """Chat puts `detail` inside `image_url`; /responses puts it on the part."""
    image_url = part.get("image_url")
    if isinstance(image_url, Mapping):
        return image_url.get("detail")
    return part.get("detail")


def _walk(value: object) -> Iterator[Piece]:
    """Every string a value holds, ids and type tags aside; media parts at their flat cost."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        if _part_type(value) in _MEDIA_PARTS:
            yield from _part_pieces(value, "part")
        else:
            yield from _walk_mapping(value)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _walk_mapping(mapping: Mapping[str, Any]) -> Iterator[Piece]:
    for key, value in mapping.items():
        if key not in _UNCOUNTED_KEYS:
            yield from _walk(value)


def _tool_pieces(body: Mapping[str, Any], field: str) -> Iterator[Piece]:
    tools = body.get(field)
    if tools is None:
        return
    if not isinstance(tools, list):
        raise EstimationError(f"{field!r} must be a list, not {json_kind(tools)}")
    if tools:
        yield TOOLS_OVERHEAD_TOKENS
    for index, tool in enumerate(tools):
        if not isinstance(tool, Mapping):
            raise EstimationError(f"{field}[{index}] must be an object, not {json_kind(tool)}")
        try:
            yield json.dumps(tool, ensure_ascii=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise EstimationError(f"{field}[{index}] is not plain JSON: {error}") from None


def token_input_pieces(value: object, field: str) -> Iterator[Piece]:
    """A /completions prompt or /embeddings input: one piece per prompt (token arrays are already counted)."""
    if isinstance(value, str):
        yield value
        return
    if not isinstance(value, list):
        raise EstimationError(f"{field!r} must be {_TOKEN_INPUT_SHAPES}, not {json_kind(value)}")
    if not value:
        return
    first = value[0]
    if isinstance(first, str):
        for index, text in enumerate(value):
            if not isinstance(text, str):
                raise EstimationError(f"{field}[{index}] must be a string like the rest, not {json_kind(text)}")
            yield text
    elif first.__class__ is int:
        if not _all_token_ids(value):
            raise EstimationError(f"{field!r} must be {_TOKEN_INPUT_SHAPES}; it mixes token ids with other values")
        yield len(value)
    elif isinstance(first, list):
        for index, tokens in enumerate(value):
            if not isinstance(tokens, list) or not _all_token_ids(tokens):
                raise EstimationError(f"{field}[{index}] must be a list of token ids")
            yield len(tokens)
    else:
        raise EstimationError(f"{field!r} must be {_TOKEN_INPUT_SHAPES}; it holds {json_kind(first)}")


def _all_token_ids(values: list[Any]) -> bool:
    # Checked in C, as token arrays run to thousands; bool is excluded since `type` is exact.
    return not values or set(map(type, values)) == {int}


def json_kind(value: object) -> str:
    """A value's JSON type, for error messages a user of JSON can read."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
