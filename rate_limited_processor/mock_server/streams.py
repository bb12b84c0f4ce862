"""A success answer as the API streams it: server-sent events built from the unstreamed payload.

Usage::

    frames = stream_frames(Endpoint.CHAT_COMPLETIONS, success_payload(...), include_usage=True)
    frames.head      # sent at once: the role chunk (chat), response.created (Responses)
    frames.tokens    # one step per token: the events sent together at that moment (one per choice)
    frames.tail      # after the last token: the finish reasons, the usage chunk, [DONE]

The stream is built from the answer itself, so reassembling it must give back exactly that answer: a test
compares the client's row with `success_payload` (for Anthropic's Messages API, `message_payload`). Text is
cut into pieces of 4 characters, the mock's token (its `usage` counts characters / 4). Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..providers.endpoints import Endpoint

__all__ = ["Frames", "stream_frames", "wants_stream", "CHARS_PER_TOKEN"]

#: Characters per streamed piece, as the mock counts tokens.
CHARS_PER_TOKEN = 4


@dataclass(frozen=True, slots=True)
class Frames:
    """The events of one streamed answer, in three parts by when they are sent."""

    head: tuple[bytes, ...]
    #: tokens[k]: the events of the k-th token step, sent together.
    tokens: tuple[tuple[bytes, ...], ...]
    tail: tuple[bytes, ...]


def wants_stream(body: Any) -> bool:
    """The request asks for a streamed answer (`"stream": true`), as the API reads it."""
    return isinstance(body, Mapping) and body.get("stream") is True


def _event(data: Any, event: str | None = None) -> bytes:
    line = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return (f"event: {event}\n" if event else "").encode() + f"data: {line}\n\n".encode()


def _pieces(text: str) -> list[str]:
    return [text[start : start + CHARS_PER_TOKEN] for start in range(0, len(text), CHARS_PER_TOKEN)]


def _steps(per_choice: list[list[bytes]]) -> tuple[tuple[bytes, ...], ...]:
    """Token steps: at step k, the k-th piece of every choice that has one."""
    longest = max((len(pieces) for pieces in per_choice), default=0)
    return tuple(tuple(pieces[k] for pieces in per_choice if k < len(pieces)) for k in range(longest))


def stream_frames(endpoint: Endpoint, payload: Mapping[str, Any], *, include_usage: bool) -> Frames:
    """The events that stream `payload` (the unstreamed 200 body for this endpoint)."""
    if endpoint is Endpoint.RESPONSES:
        return _responses_frames(payload)
    if endpoint is Endpoint.MESSAGES:
        return _messages_frames(payload)
    top = {"id": payload["id"], "created": payload["created"], "model": payload["model"]}
    chat = endpoint is Endpoint.CHAT_COMPLETIONS
    top["object"] = "chat.completion.chunk" if chat else "text_completion"
    head: list[bytes] = []
    per_choice: list[list[bytes]] = []
    tail: list[bytes] = []
    for choice in payload["choices"]:
        index = choice["index"]
        if chat:
            message = choice["message"]
            role = {"role": message["role"], "content": "", "refusal": message.get("refusal")}
            head.append(_event({**top, "choices": [{"index": index, "delta": role, "logprobs": None, "finish_reason": None}]}))
            per_choice.append([
                _event({**top, "choices": [{"index": index, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}]})
                for piece in _pieces(message["content"])
            ])
            finish = {"index": index, "delta": {}, "logprobs": None, "finish_reason": choice["finish_reason"]}
        else:
            per_choice.append([
                _event({**top, "choices": [{"index": index, "text": piece, "logprobs": None, "finish_reason": None}]})
                for piece in _pieces(choice["text"])
            ])
            finish = {"index": index, "text": "", "logprobs": None, "finish_reason": choice["finish_reason"]}
        tail.append(_event({**top, "choices": [finish]}))
    if include_usage:
        tail.append(_event({**top, "choices": [], "usage": payload["usage"]}))
    tail.append(_event("[DONE]"))
    return Frames(tuple(head), _steps(per_choice), tuple(tail))


def _responses_frames(payload: Mapping[str, Any]) -> Frames:
    """The Responses API's typed events: created, the text deltas, completed (carrying the whole response)."""
    sequence = iter(range(1_000_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return _event({"type": kind, "sequence_number": next(sequence), **fields}, kind)

    started = {**payload, "status": "in_progress", "output": [], "usage": None}
    head = [event("response.created", response=started)]
    per_item: list[list[bytes]] = []
    for output_index, item in enumerate(payload["output"]):
        head.append(event("response.output_item.added", output_index=output_index, item={**item, "status": "in_progress", "content": []}))
        for content_index, part in enumerate(item.get("content", [])):
            per_item.append([
                event("response.output_text.delta", item_id=item["id"], output_index=output_index, content_index=content_index, delta=piece)
                for piece in _pieces(part.get("text", ""))
            ])
    tokens = tuple((frame,) for frames in per_item for frame in frames)
    tail = (event("response.completed", response=dict(payload)),)
    return Frames(tuple(head), tokens, tail)


def _messages_frames(payload: Mapping[str, Any]) -> Frames:
    """Anthropic's events: message_start (the message with no content yet, its input usage) and a ping; each
    content block in turn started, its text deltas, stopped; then message_delta (the stop reason, and the usage
    in all: its counts are totals) and message_stop. A block's start and the previous block's stop go out with
    its first delta."""

    def event(kind: str, **fields: Any) -> bytes:
        return _event({"type": kind, **fields}, kind)

    usage = dict(payload["usage"])
    started = {**payload, "content": [], "stop_reason": None, "stop_sequence": None, "usage": {**usage, "output_tokens": 1}}
    head = [event("message_start", message=started), event("ping")]
    steps: list[tuple[bytes, ...]] = []
    pending: list[bytes] = []  # frames that go out with the next delta
    for index, block in enumerate(payload["content"]):
        if index:
            pending.append(event("content_block_stop", index=index - 1))
        pending.append(event("content_block_start", index=index, content_block={**block, "text": ""}))
        if not steps:
            head.extend(pending)
            pending = []
        for piece in _pieces(block["text"]):
            steps.append((*pending, event("content_block_delta", index=index, delta={"type": "text_delta", "text": piece})))
            pending = []
    tail = [*pending]
    if payload["content"]:
        tail.append(event("content_block_stop", index=len(payload["content"]) - 1))
    tail.append(event("message_delta", delta={"stop_reason": payload["stop_reason"], "stop_sequence": payload["stop_sequence"]}, usage=usage))
    tail.append(event("message_stop"))
    return Frames(tuple(head), tuple(steps), tuple(tail))
