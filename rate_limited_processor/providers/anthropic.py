"""Anthropic's Messages API (`https://api.anthropic.com/v1/messages`).

Its key goes in `x-api-key` (read from $ANTHROPIC_API_KEY), and every request names the API version it speaks
(`anthropic-version`). It limits requests, input tokens (ITPM) and output tokens (OTPM) apart, and states them
in `anthropic-ratelimit-{requests,input-tokens,output-tokens}-*` headers, with resets as RFC 3339 times. A
request is charged its prompt against the input-token limit, and reserves its `max_tokens` against the
output-token limit (`Endpoint.charged_tokens`, `token_estimation.output_reservation`). Claude's tokenizer is
not public: its tokens are estimated at one per `CHARACTERS_PER_TOKEN` characters, and the tuner corrects the
pace by what the headers say was spent. Its errors are `{"type": "error", "error": {"type", "message"}}`, an
overloaded API answers 529 `overloaded_error`, and an empty account says so in words.

`--mode batch` speaks its Message Batches API (not OpenAI's Files and Batches): POST {"requests": [{"custom_id",
"params"}]} to /v1/messages/batches, GET the batch until its `processing_status` is "ended", then read its
`results_url` (JSONL in any order; each line's `result.type` is succeeded, errored, canceled or expired). Its paths,
limits, custom_id rule, statuses and result shapes are below; the calls are made by `jobs/message_batches.py`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

from ..base import strict_json
from ..base.durations import seconds_until
from ..base.errors import StreamProblem
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
    "STREAM_EVENTS", "STREAM_END", "MessageStream",
    "BATCHES", "BATCHES_PAGE", "batches_listing", "BATCH_MAX_REQUESTS", "BATCH_MAX_BYTES", "CUSTOM_ID", "BATCH_ENDED", "BATCH_STATUSES", "RESULT_TYPES",
    "FILES_BATCHES_REFUSAL", "messages_root", "batch_request", "batch_request_size", "batch_create_body", "batch_ended", "batch_status",
    "batch_total", "batch_created_at", "BatchResult", "read_batch_result",
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


#: The types of its stream events (`error` aside, which is an error body).
STREAM_EVENTS = frozenset({"message_start", "content_block_start", "content_block_delta", "content_block_stop", "message_delta", "message_stop", "ping"})
#: The event that ends its stream.
STREAM_END = "message_stop"
#: A content block's delta, by its type: the field it adds to (named alike in the delta and in the block).
_BLOCK_DELTAS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json", "signature_delta": "signature"}


class MessageStream:
    """A streamed Messages answer, folded into the message an unstreamed request gets: `message_start`'s message,
    each content block's deltas folded in by its index, `message_delta`'s stop reason and usage; `message_stop`
    ends it (`complete`). Pure; memory: the answer's text, once."""

    __slots__ = ("message", "complete", "_blocks")
    #: The event that ends the stream, for messages about one that ended without it.
    end_marker: ClassVar[str] = STREAM_END

    def __init__(self) -> None:
        self.message: dict[str, Any] | None = None
        self.complete = False
        self._blocks: dict[int, dict[str, Any]] = {}

    @property
    def started(self) -> bool:
        return self.message is not None

    def answer(self) -> dict[str, Any]:
        assert self.message is not None
        return {**self.message, "content": [_finished_block(self._blocks[index]) for index in sorted(self._blocks)]}

    def add(self, kind: str, data: dict[str, Any], number: int) -> bool:
        """Fold in one event (its type, its data, its number in the stream). Blocks come by index: started, their deltas added, stopped. An event that
        would leave the answer short or blended (a block's delta before its start, a block or a message started
        twice) is a problem: the stream is no answer, and the request is sent again as after a cut."""
        if kind == "message_start":
            message = data.get("message")
            if not isinstance(message, dict):
                raise StreamProblem(f"event {number} (message_start) carries no message object")
            if self.message is not None:
                raise StreamProblem(f"event {number} starts a second message")
            self.message = dict(message)
            return False
        if self.message is None:
            if kind == "ping":
                return False
            raise StreamProblem(f"event {number} ({kind}) came before message_start")
        if kind == "message_stop":
            self.complete = True
            return False
        if kind == "message_delta":
            self._delta(data.get("delta"), data.get("usage"))
            return False
        if kind == "ping" or kind == "content_block_stop":
            return False
        index = data.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise StreamProblem(f"event {number} ({kind}) names no content block")
        if kind == "content_block_start":
            block = data.get("content_block")
            if index in self._blocks or not isinstance(block, dict):
                raise StreamProblem(f"event {number} starts content block {index} {'again' if index in self._blocks else 'with no object'}")
            self._blocks[index] = dict(block)
            return False
        block = self._blocks.get(index)
        delta = data.get("delta")
        if block is None or not isinstance(delta, dict):
            raise StreamProblem(f"event {number} adds to content block {index}, which has not started" if block is None
                                else f"event {number} carries no delta object")
        delta_type = delta.get("type")
        if delta_type == "citations_delta":
            citations = block.get("citations")
            block["citations"] = [*(citations if isinstance(citations, list) else ()), delta.get("citation")]
            return False
        field = _BLOCK_DELTAS.get(delta_type) if isinstance(delta_type, str) else None
        piece = delta.get(field) if field is not None else None
        if field is None or not isinstance(piece, str):
            return False  # a kind of delta not known here: it adds nothing this tool could rebuild
        joined = block.get(field)
        block[field] = (joined if isinstance(joined, str) else "") + piece
        return bool(piece) and field != "signature"

    def _delta(self, delta: Any, usage: Any) -> None:
        """The message's stop reason and sequence; its usage, whose counts are the totals so far (not increments).
        A count left out or null keeps what message_start said."""
        assert self.message is not None
        if isinstance(delta, dict):
            self.message.update((name, value) for name, value in delta.items() if name not in ("content", "usage"))
        if isinstance(usage, dict):
            known = self.message.get("usage")
            counts = dict(known) if isinstance(known, dict) else {}
            counts.update((name, value) for name, value in usage.items() if value is not None)
            self.message["usage"] = counts


def _finished_block(block: dict[str, Any]) -> dict[str, Any]:
    """A content block as the unstreamed answer holds it: a tool call's input is the JSON its
    `partial_json` pieces spell, as an object (`{}` when none came)."""
    if "partial_json" not in block:
        return block
    finished = {name: value for name, value in block.items() if name != "partial_json"}
    text = block["partial_json"]
    if not isinstance(text, str):  # only a content_block_start could have put it there, and not as text
        raise StreamProblem("a tool call's input in the stream is not text")
    try:
        finished["input"] = strict_json.loads(text) if text.strip() else {}
    except strict_json.InvalidJSON as error:
        raise StreamProblem(f"a tool call's input in the stream is not JSON ({error.reason})") from None
    return finished



#: The most requests, and bytes of the create call's body, one of its Message Batches takes.
BATCH_MAX_REQUESTS = 100_000
BATCH_MAX_BYTES = 256 * 1024**2

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
    message_batches=True,
    batch_max_lines=BATCH_MAX_REQUESTS,
    price_provider="anthropic",
)


# --- Message Batches (`--mode batch`) ---------------------------------------------------------------------

#: Its batch API's collection, under the API root ("https://api.anthropic.com/v1/messages" + this).
BATCHES = "/batches"
#: Batches per page of the batches listing (newest first).
BATCHES_PAGE = 100
#: What a request's custom_id must match; custom_ids are unique within a batch.
CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
#: A batch's `processing_status`es: it runs until "ended" (a cancel passes through "canceling").
BATCH_ENDED = "ended"
BATCH_STATUSES = ("in_progress", "canceling", BATCH_ENDED)
#: How a line's result ends (`result.type`), and the results another try (online) could change.
RESULT_TYPES = ("succeeded", "errored", "canceled", "expired")
_RETRYABLE_RESULTS = frozenset({"canceled", "expired"})
#: Error types of an errored result that the online API would answer the same way: not worth sending again.
_FINAL_ERRORS = frozenset({"invalid_request_error", "authentication_error", "permission_error", "not_found_error", "request_too_large"})
#: Why OpenAI's Files and Batches endpoints cannot take a /v1/messages line (its own batch API can).
FILES_BATCHES_REFUSAL = "/v1/messages lines go through Anthropic's Message Batches API: use a /v1/messages --request_url for them"


def messages_root(request_url: str) -> str:
    """Where the Message Batches API hangs from: the request URL up to and including /v1/messages."""
    parts = urlsplit(request_url)
    path = parts.path.rstrip("/")
    path = path if path.endswith("/v1/messages") else "/v1/messages"
    return f"{parts.scheme}://{parts.netloc}{path}"


def batches_listing(after_id: str | None = None) -> str:
    """One page of the batches listing, newest first; after the batch `after_id` (a page's `last_id`) when given."""
    return f"{BATCHES}?limit={BATCHES_PAGE}" + (f"&after_id={after_id}" if after_id is not None else "")


def batch_request(custom_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """One request of a create call's `requests` list: the Messages body as `params`."""
    return {"custom_id": custom_id, "params": dict(params)}


def batch_request_size(custom_id: str, params_json: bytes) -> int:
    """The bytes `batch_request` takes in the create body (comma included), from the params' compact JSON."""
    return len(params_json) + len(custom_id) + len('{"custom_id":"","params":},')


def batch_create_body(requests_json: list[bytes]) -> bytes:
    """The create call's body, from each request's compact JSON: `{"requests": [...]}`."""
    return b'{"requests":[' + b",".join(requests_json) + b"]}"


def batch_ended(batch: Mapping[str, Any]) -> bool:
    return batch.get("processing_status") == BATCH_ENDED


def batch_status(batch: Mapping[str, Any]) -> str:
    """Its `processing_status`, for a message ("in_progress", "canceling", "ended")."""
    return str(batch.get("processing_status"))


def batch_total(batch: Mapping[str, Any]) -> int:
    """How many requests a batch holds: the sum of its `request_counts`."""
    counts = batch.get("request_counts")
    return sum(value for value in counts.values() if isinstance(value, int)) if isinstance(counts, Mapping) else 0


def batch_created_at(batch: Mapping[str, Any]) -> float | None:
    """Its `created_at` (RFC 3339) as epoch seconds; None when it has none that reads."""
    created = batch.get("created_at")
    if not isinstance(created, str):
        return None
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """One line's result, read: its answer (a Messages body), or why not and the status that stands for it."""

    message: dict[str, Any] | None
    reason: str = ""
    status: int | None = None
    error_body: dict[str, Any] | None = None
    #: Another try (online) could change it: it expired, was canceled, or the server failed it.
    retryable: bool = False


def read_batch_result(result: Any) -> BatchResult:
    """A results line's `result`: {"type": "succeeded", "message"} or "errored" with its `error` (an error
    response), "canceled" or "expired"."""
    kind = result.get("type") if isinstance(result, Mapping) else None
    if kind == "succeeded" and isinstance(result.get("message"), dict):
        return BatchResult(result["message"], status=200)
    if kind in _RETRYABLE_RESULTS:
        why = "expired before the batch ran it (24 hours)" if kind == "expired" else "canceled with its batch"
        return BatchResult(None, f"{kind}: {why}", retryable=True)
    error = result.get("error") if isinstance(result, Mapping) else None
    inner = error.get("error") if isinstance(error, Mapping) else None
    inner = inner if isinstance(inner, Mapping) else error if isinstance(error, Mapping) else {}
    type_ = str(inner.get("type") or "error")
    message = str(inner.get("message") or "(no error message)")
    status = ERRORS.relayed_status.get(type_, 400 if type_ == "invalid_request_error" else None)
    body = dict(error) if isinstance(error, Mapping) else None
    return BatchResult(None, f"errored: {type_}: {message}", status=status, error_body=body, retryable=type_ not in _FINAL_ERRORS)
