"""Streamed answers: server-sent events in, the answer a non-streamed request would have got out.

Usage::

    body = streamed_body(endpoint, request_body)     # {"stream": true, "stream_options": {"include_usage": true}, ...}
    parser, answer = EventStreamParser(), StreamAssembler()
    for chunk in chunks_as_they_arrive:
        for event in parser.feed(chunk):
            if answer.add(event):                  # True: the event carried output (a token, for the timings)
                ...
    answer.complete                                  # False when the stream ended before its end ([DONE], message_stop)
    answer.answer()                                  # {"choices": [{"message": {"content": <the deltas joined>}}], "usage": ...}

`EventStreamParser` follows the WHATWG rules for `text/event-stream` (lines ended by CRLF, LF or CR; `data`
lines joined by LF; comments and unknown fields ignored; a blank line dispatches). The libraries that parse
it (httpx-sse, sseclient) are bound to their own HTTP clients, and these rules fit in a screen.

`StreamAssembler` rebuilds chat completions (`choices[i].delta`: strings joined, tool-call deltas merged by
their index, the role and finish reason kept), legacy completions (`choices[i].text`), the Responses API
(the `response` of its `response.completed` event) and, through the provider that knows its events
(`providers.registry.MessageStream`, Anthropic's), the Messages API. `usage` comes from the chunk that carries it, the last with
`stream_options.include_usage`. An error event becomes the answer (`{"error": ...}`), to be judged as any
error body is. Pure: no I/O, no clock.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..base import strict_json
from ..base.errors import StreamProblem
from ..providers.endpoints import Endpoint
from ..providers.registry import MESSAGE_STREAM_EVENTS, MessageStream

__all__ = [
    "STREAMED_ENDPOINTS",
    "EVENT_STREAM",
    "DONE",
    "ServerSentEvent",
    "EventStreamParser",
    "StreamAssembler",
    "StreamProblem",
    "streamed_body",
    "is_event_stream",
]

#: The endpoints that answer with a stream when asked; embeddings do not stream.
STREAMED_ENDPOINTS = frozenset({Endpoint.CHAT_COMPLETIONS, Endpoint.COMPLETIONS, Endpoint.RESPONSES, Endpoint.MESSAGES})
#: The content type of a stream of server-sent events.
EVENT_STREAM = "text/event-stream"
#: The data of the last event of an OpenAI chat or completions stream.
DONE = "[DONE]"
#: The Responses API's events that end its stream, each carrying the whole response.
_RESPONSE_ENDS = frozenset({"response.completed", "response.failed", "response.incomplete"})
_LINE_END = re.compile(r"\r\n|\r|\n")
#: Keys of a choice's delta that are not text to join.
_DELTA_SPECIAL = frozenset({"role", "tool_calls", "function_call"})


def streamed_body(endpoint: Endpoint, body: Mapping[str, Any]) -> dict[str, Any]:
    """The body asking for a stream: `stream`, and for chat and completions the usage in the last chunk.

    The Responses API sends its usage in `response.completed`, and Anthropic's in `message_start` and
    `message_delta`; neither takes `stream_options` (Anthropic refuses fields it does not know).
    """
    streamed = {**body, "stream": True}
    if endpoint is Endpoint.CHAT_COMPLETIONS or endpoint is Endpoint.COMPLETIONS:
        options = body.get("stream_options")
        streamed["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    return streamed


def is_event_stream(headers: Mapping[str, str]) -> bool:
    """A response whose body is server-sent events (header names in any case; transports give lower case)."""
    content_type = headers.get("content-type")
    if content_type is None:
        content_type = next((value for name, value in headers.items() if name.lower() == "content-type"), "")
    return content_type.split(";", 1)[0].strip().lower() == EVENT_STREAM


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One event: its type (`event:`, "message" when none) and its data (the `data:` lines joined by LF)."""

    data: str
    event: str = "message"


class EventStreamParser:
    """Bytes of a `text/event-stream` in, whole events out, however the bytes were split on the way."""

    __slots__ = ("_decoder", "_buffer", "_data", "_event", "_started", "_pending_cr")

    def __init__(self) -> None:
        # Incremental: a UTF-8 character split between two chunks is decoded whole.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event = ""
        self._started = False
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """The events this chunk completes."""
        text = self._decoder.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._pending_cr and text.startswith("\n"):  # a CRLF split between two chunks
            text = text[1:]
        self._pending_cr = text.endswith("\r")
        # Only CR, LF and CRLF end a line here (str.splitlines would also split on U+2028, which JSON allows).
        *lines, self._buffer = _LINE_END.split(self._buffer + text)
        events: list[ServerSentEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (servers send ": keep-alive")
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return ServerSentEvent("\n".join(data), event or "message")


class StreamAssembler:
    """The events of one streamed answer, folded into the answer as the API would have sent it unstreamed.

    Memory: the answer's text, once; never the events.
    """

    __slots__ = ("events", "complete", "_top", "_choices", "_usage", "_response", "_error", "_chat", "_message", "_responses")

    def __init__(self) -> None:
        #: Events read (data events, the end marker included).
        self.events = 0
        #: The stream reached its end: `[DONE]`, a Responses end event, Anthropic's `message_stop`, or an error event.
        self.complete = False
        self._top: dict[str, Any] = {}
        self._choices: dict[int, _Choice] = {}
        self._usage: Any = None
        self._response: Any = None
        self._error: Any = None
        self._chat = False
        self._message = MessageStream()  # a Messages stream's (the provider folds its events)
        self._responses = False  # a Responses API stream (its events' types start "response.")

    def add(self, event: ServerSentEvent) -> bool:
        """Fold in one event; True when it carried output (text, a refusal, tool-call arguments)."""
        self.events += 1
        if self.complete:
            return False
        if event.data.strip() == DONE:
            self.complete = True
            return False
        try:
            data = strict_json.loads(event.data)
        except strict_json.InvalidJSON as error:
            raise StreamProblem(f"event {self.events} of the stream is not JSON ({error.reason})") from None
        if not isinstance(data, dict):
            raise StreamProblem(f"event {self.events} of the stream is not a JSON object")
        if data.get("error") not in (None, {}, "") or data.get("object") == "error":
            self._error = data if "error" in data else {"error": data}
            self.complete = True
            return False
        kind = data.get("type")
        if isinstance(kind, str) and kind.startswith(("response.", "error")):
            return self._responses_event(kind, data)
        if isinstance(kind, str) and kind in MESSAGE_STREAM_EVENTS:
            output = self._message.add(kind, data, self.events)
            self.complete = self._message.complete
            return output
        return self._chunk(data)

    @property
    def end_marker(self) -> str:
        """The event that ends this kind of stream, for messages about one that ended without it."""
        return self._message.end_marker if self._message.started else "response.completed" if self._responses else "[DONE]"

    def answer(self) -> dict[str, Any]:
        """The answer as an unstreamed request gets it (call once the stream is complete)."""
        if self._error is not None:
            return dict(self._error)
        if self._response is not None:
            return dict(self._response)
        if self._message.started:
            return self._message.answer()
        answer = dict(self._top)
        answer["object"] = "chat.completion" if self._chat else "text_completion"
        answer["choices"] = [self._choices[index].answer(index, chat=self._chat) for index in sorted(self._choices)]
        if self._usage is not None:
            answer["usage"] = self._usage
        return answer

    def _responses_event(self, kind: str, data: dict[str, Any]) -> bool:
        self._responses = True
        if kind == "error":  # the Responses API's error event: {"type": "error", "code", "message", ...}
            self._error = {"error": {name: value for name, value in data.items() if name not in ("type", "sequence_number")}}
            self.complete = True
            return False
        if kind in _RESPONSE_ENDS:
            response = data.get("response")
            if not isinstance(response, dict):
                raise StreamProblem(f"event {self.events} ({kind}) carries no response object")
            self._response = response
            self.complete = True
            return False
        delta = data.get("delta")
        return kind.endswith(".delta") and isinstance(delta, str) and bool(delta)

    def _chunk(self, data: dict[str, Any]) -> bool:
        for name in ("id", "created", "model", "system_fingerprint", "service_tier"):
            value = data.get(name)
            if value is not None:
                self._top[name] = value
        if data.get("object") == "chat.completion.chunk":
            self._chat = True
        usage = data.get("usage")
        if usage is not None:
            self._usage = usage
        output = False
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0)
            index = index if isinstance(index, int) and not isinstance(index, bool) else 0
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _Choice()
            if isinstance(choice.get("delta"), dict):
                self._chat = True
            output |= state.add(choice)
        return output


class _Choice:
    """One choice being streamed: its message (chat) or text (completions), finish reason and logprobs."""

    __slots__ = ("message", "text", "tool_calls", "function_call", "finish_reason", "logprobs", "extra")

    def __init__(self) -> None:
        self.message: dict[str, Any] = {}
        self.text: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None
        self.finish_reason: Any = None
        self.logprobs: Any = None
        self.extra: dict[str, Any] = {}

    def add(self, choice: dict[str, Any]) -> bool:
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        self._add_logprobs(choice.get("logprobs"))
        for name, value in choice.items():
            if name not in ("index", "delta", "text", "finish_reason", "logprobs") and value is not None:
                self.extra[name] = value
        text = choice.get("text")
        if isinstance(text, str):
            self.text.append(text)
            return bool(text)
        delta = choice.get("delta")
        return self._add_delta(delta) if isinstance(delta, dict) else False

    def _add_delta(self, delta: dict[str, Any]) -> bool:
        output = False
        role = delta.get("role")
        if isinstance(role, str) and "role" not in self.message:
            self.message["role"] = role
        for name, value in delta.items():
            if name in _DELTA_SPECIAL:
                continue
            if isinstance(value, str):
                joined = self.message.get(name)
                self.message[name] = (joined if isinstance(joined, str) else "") + value
                output |= bool(value)
            elif name not in self.message or value is not None:
                self.message[name] = value  # null until some delta says otherwise; other values: the last
        for call in delta.get("tool_calls") or ():
            if isinstance(call, dict):
                output |= self._add_tool_call(call)
        function_call = delta.get("function_call")
        if isinstance(function_call, dict):
            if self.function_call is None:
                self.function_call = {"name": "", "arguments": ""}
            output |= _merge_function(self.function_call, function_call)
        return output

    def _add_tool_call(self, call: dict[str, Any]) -> bool:
        index = call.get("index", len(self.tool_calls))
        index = index if isinstance(index, int) and not isinstance(index, bool) else len(self.tool_calls)
        merged = self.tool_calls.get(index)
        if merged is None:
            merged = self.tool_calls[index] = {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        if isinstance(call.get("id"), str) and call["id"] and merged["id"] is None:
            merged["id"] = call["id"]
        if isinstance(call.get("type"), str) and call["type"]:
            merged["type"] = call["type"]
        function = call.get("function")
        return _merge_function(merged["function"], function) if isinstance(function, dict) else False

    def _add_logprobs(self, logprobs: Any) -> None:
        if not isinstance(logprobs, dict):
            return
        if self.logprobs is None:
            self.logprobs = {}
        for name, value in logprobs.items():
            if isinstance(value, list):
                self.logprobs.setdefault(name, []).extend(value)
            elif value is not None or name not in self.logprobs:
                self.logprobs[name] = value

    def answer(self, index: int, *, chat: bool) -> dict[str, Any]:
        answer: dict[str, Any] = {"index": index}
        if chat:
            message = {"role": "assistant", "content": None, **self.message}
            if self.tool_calls:
                message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if self.function_call is not None:
                message["function_call"] = self.function_call
            answer["message"] = message
        else:
            answer["text"] = "".join(self.text)
        answer.update(self.extra)
        answer["logprobs"] = self.logprobs
        answer["finish_reason"] = self.finish_reason
        return answer


def _merge_function(merged: dict[str, Any], delta: dict[str, Any]) -> bool:
    """A function call's name comes once (kept from its first delta), its arguments in pieces (joined)."""
    name = delta.get("name")
    if isinstance(name, str) and name and not merged["name"]:
        merged["name"] = name
    arguments = delta.get("arguments")
    if isinstance(arguments, str):
        merged["arguments"] += arguments
        return bool(arguments)
    return False
