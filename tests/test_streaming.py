"""Server-sent events in, the unstreamed answer out: the parser under any split of its bytes, and the
reassembly of chat (text, tool calls, refusals, several choices), completions and the Responses API.

Expected answers are written out by hand here, as the API documents its shapes; the mock's own streams are
checked against the mock's unstreamed answer, which is built without the stream.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from rate_limited_processor.mock_server.anthropic import message_payload
from rate_limited_processor.mock_server.record import request_key
from rate_limited_processor.mock_server.responses import success_payload
from rate_limited_processor.mock_server.streams import stream_frames
from rate_limited_processor.providers.endpoints import Endpoint
from rate_limited_processor.transport.streaming import EventStreamParser, ServerSentEvent, StreamAssembler, StreamProblem, streamed_body


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (event if isinstance(event, str) else json.dumps(event)).encode() + b"\n\n" for event in events)


def reassemble(raw: bytes, *, split: int | None = None) -> StreamAssembler:
    parser, answer = EventStreamParser(), StreamAssembler()
    pieces = [raw] if split is None else [raw[i : i + split] for i in range(0, len(raw), split)]
    for piece in pieces:
        for event in parser.feed(piece):
            answer.add(event)
    return answer


def chunk(delta: dict[str, Any] | None = None, *, index: int = 0, finish: str | None = None, **top: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "m", "choices": choices, **top}


# -- the parser ------------------------------------------------------------------------------------------


def test_events_come_out_whole_however_the_bytes_are_split() -> None:
    raw = (
        "\ufeff: keep-alive\r\n"
        "event: message\r\ndata: {\"a\": \"é\u2028x\"}\r\n\r\n"    # CRLF; a character JSON allows raw, which is no line end
        "data: first line\ndata: second line\n\n"                  # two data lines join with LF
        "id: 3\nretry: 10\ndata:no space\r\r"                      # CR alone ends lines; unknown fields ignored
        "event: done\ndata\n\n"                                     # a field without a colon: empty data
        "data: never dispatched"                                    # no blank line after it
    ).encode()
    expected = [
        ServerSentEvent('{"a": "é\u2028x"}'),
        ServerSentEvent("first line\nsecond line"),
        ServerSentEvent("no space"),
        ServerSentEvent("", "done"),
    ]
    for split in (1, 2, 3, 5, 7, len(raw)):
        parser = EventStreamParser()
        events = [event for start in range(0, len(raw), split) for event in parser.feed(raw[start : start + split])]
        assert events == expected, split


def test_an_event_without_data_is_not_dispatched() -> None:
    assert EventStreamParser().feed(b"event: ping\n\n: comment\n\n") == []


# -- chat completions ------------------------------------------------------------------------------------


def test_chat_deltas_join_into_the_message_with_usage_from_the_last_chunk() -> None:
    raw = sse(
        chunk({"role": "assistant", "content": "", "refusal": None}),
        chunk({"content": "Hel"}),
        chunk({"content": "lo, "}),
        chunk({"content": "wörld"}),
        chunk({}, finish="stop"),
        chunk(None, usage={"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
        "[DONE]",
    )
    for split in (1, 4, None):
        answer = reassemble(raw, split=split)
        assert answer.complete
        assert answer.answer() == {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello, wörld", "refusal": None}, "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }


def test_tool_call_deltas_merge_by_their_index_and_a_tool_only_message_has_no_content() -> None:
    raw = sse(
        chunk({"role": "assistant", "content": None, "tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "time", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Oslo\"}"}}]}),
        chunk({}, finish="tool_calls"),
        "[DONE]",
    )
    [choice] = reassemble(raw).answer()["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {
        "role": "assistant", "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": "{}"}},
        ],
    }


def test_interleaved_choices_are_kept_apart_in_index_order() -> None:
    raw = sse(
        chunk({"role": "assistant", "content": ""}, index=1),
        chunk({"role": "assistant", "content": ""}, index=0),
        chunk({"content": "B1"}, index=1), chunk({"content": "A1"}, index=0),
        chunk({"content": "B2"}, index=1), chunk({"content": "A2"}, index=0),
        chunk({}, index=0, finish="stop"), chunk({}, index=1, finish="length"),
        "[DONE]",
    )
    choices = reassemble(raw).answer()["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [(0, "A1A2", "stop"), (1, "B1B2", "length")]


def test_a_refusal_and_logprobs_are_reassembled_too() -> None:
    raw = sse(
        chunk({"role": "assistant", "content": None, "refusal": ""}),
        {**chunk({"refusal": "I can't"}), "choices": [{"index": 0, "delta": {"refusal": "I can't"}, "logprobs": {"content": None, "refusal": [{"token": "I"}]}, "finish_reason": None}]},
        {**chunk({"refusal": " help."}), "choices": [{"index": 0, "delta": {"refusal": " help."}, "logprobs": {"content": None, "refusal": [{"token": " help"}]}, "finish_reason": "stop"}]},
        "[DONE]",
    )
    [choice] = reassemble(raw).answer()["choices"]
    assert choice["message"] == {"role": "assistant", "content": None, "refusal": "I can't help."}
    assert choice["logprobs"] == {"content": None, "refusal": [{"token": "I"}, {"token": " help"}]}


def test_which_events_carry_output() -> None:
    answer = StreamAssembler()
    carried = [answer.add(ServerSentEvent(json.dumps(event))) for event in (
        chunk({"role": "assistant", "content": ""}),      # the role alone: not a token
        chunk({"content": "x"}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}),
        chunk({}, finish="stop"),
        chunk(None, usage={"completion_tokens": 2}),
    )]
    assert carried == [False, True, True, False, False]


def test_a_stream_without_done_is_not_complete_and_a_broken_event_is_a_problem() -> None:
    assert not reassemble(sse(chunk({"role": "assistant", "content": "half"}), chunk({"content": " an answer"}))).complete
    with pytest.raises(StreamProblem, match="event 2 of the stream is not JSON"):
        reassemble(sse(chunk({"content": "a"})) + b"data: {not json\n\n")
    with pytest.raises(StreamProblem, match="not a JSON object"):
        reassemble(b"data: [1, 2]\n\n")


def test_an_error_event_is_the_answer() -> None:
    raw = sse(chunk({"role": "assistant", "content": "par"}), {"error": {"message": "overloaded", "type": "server_error", "code": None}})
    answer = reassemble(raw)
    assert answer.complete
    assert answer.answer() == {"error": {"message": "overloaded", "type": "server_error", "code": None}}


# -- completions and the Responses API -----------------------------------------------------------------------


def test_completion_text_pieces_join_per_choice() -> None:
    top = {"id": "cmpl-1", "object": "text_completion", "created": 7, "model": "m"}
    raw = sse(
        {**top, "choices": [{"index": 0, "text": "Once", "logprobs": None, "finish_reason": None}]},
        {**top, "choices": [{"index": 0, "text": " upon", "logprobs": None, "finish_reason": "length"}]},
        {**top, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
        "[DONE]",
    )
    assert reassemble(raw).answer() == {
        **top, "choices": [{"index": 0, "text": "Once upon", "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def test_a_responses_stream_ends_with_the_response_its_completed_event_carries() -> None:
    final = {"id": "resp_1", "object": "response", "status": "completed", "output": [{"type": "message", "content": [{"type": "output_text", "text": "Hi there"}]}], "usage": {"output_tokens": 2}}
    events = [
        ("response.created", {"type": "response.created", "response": {**final, "status": "in_progress", "output": []}}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": "Hi"}),
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": " there"}),
        ("response.completed", {"type": "response.completed", "response": final}),
    ]
    answer = StreamAssembler()
    carried = [answer.add(ServerSentEvent(json.dumps(data), name)) for name, data in events]
    assert carried == [False, True, True, False]
    assert answer.complete and answer.answer() == final
    cut = StreamAssembler()
    for name, data in events[:3]:
        cut.add(ServerSentEvent(json.dumps(data), name))
    assert not cut.complete
    failed = StreamAssembler()
    failed.add(ServerSentEvent(json.dumps({"type": "error", "code": "server_error", "message": "boom", "sequence_number": 3}), "error"))
    assert failed.complete and failed.answer() == {"error": {"code": "server_error", "message": "boom"}}


def test_the_streamed_body_asks_for_usage_except_on_responses() -> None:
    body = {"model": "m", "messages": [], "stream_options": {"include_obfuscation": False}}
    assert streamed_body(Endpoint.CHAT_COMPLETIONS, body) == {**body, "stream": True, "stream_options": {"include_obfuscation": False, "include_usage": True}}
    assert streamed_body(Endpoint.COMPLETIONS, {"prompt": "x"}) == {"prompt": "x", "stream": True, "stream_options": {"include_usage": True}}
    assert streamed_body(Endpoint.RESPONSES, {"input": "x"}) == {"input": "x", "stream": True}
    assert streamed_body(Endpoint.MESSAGES, {"max_tokens": 9}) == {"max_tokens": 9, "stream": True}  # Anthropic refuses stream_options
    assert "stream" not in body  # the request as read is left as it was


# -- the mock's streams reassemble to its unstreamed answers -------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, body",
    [
        (Endpoint.CHAT_COMPLETIONS, {"model": "m", "messages": [{"role": "user", "content": "a question of some length, ünïcode"}], "n": 3}),
        (Endpoint.COMPLETIONS, {"model": "m", "prompt": ["first prompt", "second"], "n": 2}),
        (Endpoint.RESPONSES, {"model": "m", "input": "what the Responses API streams"}),
    ],
)
def test_the_mocks_stream_reassembles_to_its_unstreamed_answer(endpoint: Endpoint, body: dict[str, Any]) -> None:
    payload = success_payload(endpoint, body, model="m", key=request_key(body))
    frames = stream_frames(endpoint, payload, include_usage=True)
    raw = b"".join([*frames.head, *(frame for step in frames.tokens for frame in step), *frames.tail])
    assert len(frames.tokens) > 3
    for split in (1, 13, None):
        answer = reassemble(raw, split=split)
        assert answer.complete
        assert answer.answer() == payload


# -- Anthropic's Messages API --------------------------------------------------------------------------------


def claude_events(*events: dict[str, Any]) -> bytes:
    """Anthropic's framing: each event named by an `event:` line as well as its `type`."""
    return b"".join(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode() for event in events)


CLAUDE_START: dict[str, Any] = {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [], "stop_reason": None,
    "stop_sequence": None, "usage": {"input_tokens": 25, "cache_read_input_tokens": 3, "output_tokens": 1},
}}


def test_a_claude_stream_folds_into_the_message_it_would_have_answered() -> None:
    raw = claude_events(
        CLAUDE_START,
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Two and "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "two."}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Four, "}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "let me check."}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {}}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"a": 2, '}},
        {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '"b": 2}'}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 31}},
        {"type": "message_stop"},
    )
    for split in (1, 7, None):
        answer = reassemble(raw, split=split)
        assert answer.complete
        assert answer.answer() == {
            **CLAUDE_START["message"],
            "content": [
                {"type": "thinking", "thinking": "Two and two.", "signature": "c2ln"},
                {"type": "text", "text": "Four, let me check."},
                {"type": "tool_use", "id": "toolu_1", "name": "add", "input": {"a": 2, "b": 2}},
            ],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 25, "cache_read_input_tokens": 3, "output_tokens": 31},  # message_delta's count is the total
        }


def test_which_claude_events_carry_output() -> None:
    answer = StreamAssembler()
    events = [
        CLAUDE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "c2ln"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
        {"type": "message_stop"},
    ]
    carried = [answer.add(ServerSentEvent(json.dumps(event), event["type"])) for event in events]
    assert carried == [False, False, True, False, False, False, False, False]


def test_a_claude_stream_cut_before_message_stop_is_not_complete_and_a_stray_event_is_a_problem() -> None:
    cut = reassemble(claude_events(
        CLAUDE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "half"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}},
    ))
    assert not cut.complete
    with pytest.raises(StreamProblem, match=r"event 1 \(content_block_delta\) came before message_start"):
        reassemble(claude_events({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}}))
    with pytest.raises(StreamProblem, match="carries no message object"):
        reassemble(claude_events({"type": "message_start", "message": "no"}))
    broken_tool = reassemble(claude_events(
        CLAUDE_START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a": '}},
        {"type": "message_stop"},
    ))
    with pytest.raises(StreamProblem, match="tool call's input in the stream is not JSON"):
        broken_tool.answer()


def test_a_claude_error_event_is_the_error_body_anthropic_sends_unstreamed() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    answer = reassemble(claude_events(CLAUDE_START, error))
    assert answer.complete and answer.answer() == error


def test_the_mocks_claude_stream_reassembles_to_its_unstreamed_message() -> None:
    body = {"model": "claude-x", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    payload = message_payload(body, model="claude-x", key="k", input_tokens=12, output_tokens=9)
    frames = stream_frames(Endpoint.MESSAGES, payload, include_usage=False)
    raw = b"".join([*frames.head, *(frame for step in frames.tokens for frame in step), *frames.tail])
    assert len(frames.tokens) > 3 and raw.startswith(b"event: message_start\n")
    for split in (1, 13, None):
        answer = reassemble(raw, split=split)
        assert answer.complete and answer.answer() == payload


def test_a_claude_usage_count_left_null_keeps_what_message_start_said() -> None:
    answer = reassemble(claude_events(
        CLAUDE_START,
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"input_tokens": None, "output_tokens": 9}},
        {"type": "message_stop"},
    ))
    assert answer.answer()["usage"] == {"input_tokens": 25, "cache_read_input_tokens": 3, "output_tokens": 9}


@pytest.mark.parametrize(
    ("events", "says"),
    [
        ([{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lost"}}], "content block 0, which has not started"),
        ([{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}] * 2, "starts content block 0 again"),
        ([CLAUDE_START], "starts a second message"),
        ([{"type": "content_block_start", "index": "0", "content_block": {"type": "text", "text": ""}}], "names no content block"),
    ],
    ids=["a delta before its block", "a block started twice", "a second message", "no index"],
)
def test_a_claude_stream_that_would_leave_the_answer_short_or_blended_is_a_problem(events: list[dict[str, Any]], says: str) -> None:
    with pytest.raises(StreamProblem, match=says):
        reassemble(claude_events(CLAUDE_START, *events, {"type": "message_stop"}))


def test_the_mocks_claude_blocks_stream_one_after_the_other() -> None:
    payload = {**message_payload({"max_tokens": 50}, model="m", key="k", input_tokens=1, output_tokens=2),
               "content": [{"type": "text", "text": "abcdefgh"}, {"type": "text", "text": "ijkl"}]}
    frames = stream_frames(Endpoint.MESSAGES, payload, include_usage=False)
    raw = b"".join([*frames.head, *(frame for step in frames.tokens for frame in step), *frames.tail])
    order = [(event.event, json.loads(event.data).get("index")) for event in EventStreamParser().feed(raw)]
    assert order == [
        ("message_start", None), ("ping", None), ("content_block_start", 0), ("content_block_delta", 0), ("content_block_delta", 0),
        ("content_block_stop", 0), ("content_block_start", 1), ("content_block_delta", 1), ("content_block_stop", 1),
        ("message_delta", None), ("message_stop", None),
    ]
    assert len(frames.tokens) == 3 and reassemble(raw).answer() == payload


#: What a lying server might put in any field of an event: every JSON kind, and the values that trip code up.
_ODD_VALUES: list[Any] = [None, True, 0, -1, 2, 10**30, 1.5, "", "x", "0", [], [1], {}, {"type": "text"}, {"a": None}]
_EVENT_TYPES: list[Any] = [
    "message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop", "ping", "error",
    "response.created", "response.output_text.delta", "response.completed", "chat.completion.chunk", None, 7, ["message_start"], {},
]
_FIELDS = ["message", "index", "content_block", "delta", "usage", "choices", "response", "error", "object", "text", "partial_json", "citation"]


def _odd_event(rng: random.Random) -> dict[str, Any]:
    event: dict[str, Any] = {"type": rng.choice(_EVENT_TYPES)}
    for name in rng.sample(_FIELDS, rng.randint(0, 4)):
        value = rng.choice(_ODD_VALUES)
        if name == "delta" and rng.random() < 0.5:
            value = {"type": rng.choice(["text_delta", "input_json_delta", "citations_delta", "thinking_delta", 3]),
                     rng.choice(["text", "partial_json", "citation", "thinking"]): rng.choice(_ODD_VALUES)}
        if name == "content_block" and rng.random() < 0.5:
            value = {"type": "tool_use", rng.choice(["citations", "partial_json", "text", "input"]): rng.choice(_ODD_VALUES)}
        event[name] = value
    return event


def test_whatever_a_lying_server_streams_is_an_answer_or_a_stream_problem_never_a_crash() -> None:
    rng = random.Random(12)
    outcomes = {"answer": 0, "problem": 0, "unfinished": 0}
    for _ in range(3_000):
        events = [CLAUDE_START if rng.random() < 0.3 else _odd_event(rng) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.5:
            events.append({"type": "message_stop"})
        try:
            answer = reassemble(claude_events(*events))
            if answer.complete:
                assert isinstance(answer.answer(), dict)
                outcomes["answer"] += 1
            else:
                outcomes["unfinished"] += 1
        except StreamProblem:
            outcomes["problem"] += 1
    assert all(count > 100 for count in outcomes.values()), outcomes  # every way out was taken
