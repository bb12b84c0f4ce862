"""The mock's Anthropic Message Batches API: create a batch of Messages requests, watch it, read its results.

Paths, as Anthropic serves them (headers `x-api-key` and `anthropic-version` on every call):
    POST /v1/messages/batches                 {"requests": [{"custom_id", "params"}, ...]}
    GET  /v1/messages/batches                 newest first (?limit= 1..1000, default 20; ?after_id= / ?before_id=)
    GET  /v1/messages/batches/{id}
    GET  /v1/messages/batches/{id}/results    JSONL, one line per request, in no particular order (once ended)
    POST /v1/messages/batches/{id}/cancel

What it checks on create, as the real API refuses it (400 invalid_request_error): the body's shape, each
custom_id (`^[a-zA-Z0-9_-]{1,64}$`, unique in the batch), at most 100,000 requests, and the body at most 256 MB
(413 request_too_large). A request's `params` are checked when it runs, as the real API does: a bad one ends
`errored` with invalid_request_error. A batch is `in_progress` for `batch_processing_seconds` after creation,
then `ended`; `batch_failed_lines` of its requests end errored (api_error) and `batch_expired_lines` expired,
drawn by seed and custom_id. `batch_never_ends` keeps batches in progress until cancelled (then `canceling`
for `batch_cancelling_seconds`, a second when that is 0, and ended with every request not yet ended canceled);
`batch_stall_at` below 1 has the batch process its first requests at an even pace up to that fraction and no more
(it too never ends on its own), and a cancel keeps what was processed by the time the cancel ends, as the real
API keeps a canceled batch's finished results. `batch_create_delay` holds the create's answer that
many seconds after the batch exists (a client killed meanwhile never learns its id). Results are served in an
order shuffled by seed. It says nothing the real API would not say.

Pure apart from the clocks it is given (`clock` for durations, `wall` epoch seconds for the RFC 3339 times).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import random
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..base import strict_json
from ..base.clock import Now
from ..providers.endpoints import Endpoint
from . import anthropic
from .config import MockConfig
from .counting import CountingError, TokenCounter
from .record import request_key
from .reply import Reply, json_reply

__all__ = ["MockMessageBatches", "BATCHES_PATH", "MAX_REQUESTS", "MAX_BODY_BYTES"]

BATCHES_PATH = "/v1/messages/batches"
MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024**2
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_WINDOW_SECONDS = 24 * 3600
#: Seconds a cancelled batch is "canceling" before it ends, unless `batch_cancelling_seconds` says.
_CANCEL_SECONDS = 1.0
_COUNT_NAMES = ("processing", "succeeded", "errored", "canceled", "expired")


@dataclass(slots=True)
class _Batch:
    id: str
    requests: list[dict[str, Any]]
    created_at: float
    created_wall: float
    status: str = "in_progress"
    cancel_at: float | None = None
    cancel_clock: float = 0.0
    ended_wall: float | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


class MockMessageBatches:
    """The Message Batches the mock holds, and the answers of their endpoints."""

    __slots__ = ("config", "_clock", "_wall", "_counter", "_batches", "_ids", "created", "received", "outcomes")

    def __init__(self, config: MockConfig, clock: Now, wall: Now) -> None:
        self.config = config
        self._clock = clock
        self._wall = wall
        self._counter = TokenCounter(config.token_counting, config.token_encoding_name)
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        #: What a test counts: batches created (in order), every custom_id received, and how results ended.
        self.created: list[str] = []
        self.received: Counter[str] = Counter()
        self.outcomes: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"MockMessageBatches({len(self._batches)} batches)"

    @staticmethod
    def serves(path: str) -> bool:
        return path.rstrip("/") == BATCHES_PATH or path.startswith(BATCHES_PATH + "/")

    def summary(self) -> dict[str, Any]:
        """For GET /mock/stats: batches created, requests received (and custom_ids received more than once), results."""
        for batch in self._batches.values():
            self._advance(batch)
        return {
            "created": len(self.created), "requests": sum(self.received.values()),
            "repeated_custom_ids": sum(1 for count in self.received.values() if count > 1), "results": dict(self.outcomes),
        }

    def answer(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes, origin: str) -> Reply:
        if anthropic.ANTHROPIC_VERSION_HEADER not in headers:
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        rest = path.rstrip("/")[len(BATCHES_PATH) :].strip("/").split("/") if path.rstrip("/") != BATCHES_PATH else []
        if not rest:
            if method == "POST":
                return self._create(body, origin)
            if method == "GET":
                return self._list(query, origin)
        else:
            batch = self._batches.get(rest[0])
            if batch is None:
                return _error(404, "not_found_error", f"No batch found with id '{rest[0]}'." if len(rest) <= 2 else "Not found")
            if method == "GET" and len(rest) == 1:
                return json_reply(200, self._object(batch, origin))
            if method == "GET" and rest[1:] == ["results"]:
                return self._results(batch)
            if method == "POST" and rest[1:] == ["cancel"]:
                return self._cancel(batch, origin)
        return _error(404, "not_found_error", "Not found")

    def _create(self, raw: bytes, origin: str) -> Reply:
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, "request_too_large", f"Request exceeds the maximum allowed number of bytes ({MAX_BODY_BYTES:,}).")
        try:
            body = strict_json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, strict_json.InvalidJSON):
            return _error(400, "invalid_request_error", "The request body is not valid JSON.")
        requests = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(requests, list) or not requests:
            return _error(400, "invalid_request_error", "requests: Field required (a non-empty list)")
        if set(body) != {"requests"}:
            return _error(400, "invalid_request_error", f"{sorted(set(body) - {'requests'})[0]}: Extra inputs are not permitted")
        if len(requests) > MAX_REQUESTS:
            return _error(400, "invalid_request_error", f"requests: a batch holds at most {MAX_REQUESTS:,} requests, got {len(requests):,}")
        seen: set[str] = set()
        for index, request in enumerate(requests):
            if not isinstance(request, dict) or set(request) != {"custom_id", "params"} or not isinstance(request["params"], dict):
                return _error(400, "invalid_request_error", f"requests.{index}: each request is an object with 'custom_id' and 'params'")
            custom_id = request["custom_id"]
            if not isinstance(custom_id, str) or _CUSTOM_ID.fullmatch(custom_id) is None:
                return _error(400, "invalid_request_error", f"requests.{index}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if custom_id in seen:
                return _error(400, "invalid_request_error", f"requests.{index}.custom_id: custom_id '{custom_id}' is not unique in the batch")
            seen.add(custom_id)
        self.received.update(seen)
        number = next(self._ids)
        batch = _Batch(f"msgbatch_{hashlib.sha256(f'{self.config.seed}-{number}'.encode()).hexdigest()[:24]}", requests, self._clock(), self._wall())
        self._batches[batch.id] = batch
        self.created.append(batch.id)
        return json_reply(200, self._object(batch, origin))

    def _list(self, query: Mapping[str, str], origin: str) -> Reply:
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            return _error(400, "invalid_request_error", "limit: Input should be between 1 and 1000")
        batches = list(reversed(self._batches.values()))  # newest first
        ids = [batch.id for batch in batches]
        if "after_id" in query:
            start = ids.index(query["after_id"]) + 1 if query["after_id"] in ids else len(ids)
            page, more = batches[start : start + limit], start + limit < len(batches)
        elif "before_id" in query:
            end = ids.index(query["before_id"]) if query["before_id"] in ids else 0
            page, more = batches[max(0, end - limit) : end], end - limit > 0
        else:
            page, more = batches[:limit], limit < len(batches)
        data = [self._object(batch, origin) for batch in page]
        return json_reply(200, {"data": data, "has_more": more, "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    def _cancel(self, batch: _Batch, origin: str) -> Reply:
        self._advance(batch)
        if batch.status == "in_progress":
            batch.status = "canceling"
            batch.cancel_at = self._wall()
            batch.cancel_clock = self._clock()
        return json_reply(200, self._object(batch, origin))

    def _results(self, batch: _Batch) -> Reply:
        self._advance(batch)
        if batch.status != "ended":
            return _error(400, "invalid_request_error", f"Batch '{batch.id}' is still being processed; its results are not available yet.")
        lines = list(batch.results)
        random.Random(f"{self.config.seed}-{batch.id}").shuffle(lines)
        return Reply(200, "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode(), "application/binary")

    def _advance(self, batch: _Batch) -> None:
        """Move the batch along to where the clock says it is: ended once processed, or at the first look after a cancel."""
        if batch.status == "ended":
            return
        if batch.status == "canceling":
            ends_at = batch.cancel_clock + (self.config.batch_cancelling_seconds or _CANCEL_SECONDS)
            if self._clock() >= ends_at:
                self._end(batch, canceled=True, done=self._done_by(batch, ends_at))
        elif self._ends_alone and self._clock() >= batch.created_at + self.config.batch_processing_seconds:
            self._end(batch, canceled=False)

    @property
    def _ends_alone(self) -> bool:
        return not self.config.batch_never_ends and self.config.batch_stall_at >= 1

    def _done_by(self, batch: _Batch, at: float) -> int:
        """How many of the batch's requests (the first ones) are processed at `at`: none with `batch_never_ends`, else
        at an even pace over `batch_processing_seconds`, up to `batch_stall_at` of them."""
        if self.config.batch_never_ends:
            return 0
        total = len(batch.requests)
        span = self.config.batch_processing_seconds
        pace = total if span <= 0 else int(total * min(1.0, (at - batch.created_at) / span))
        return min(pace, int(total * self.config.batch_stall_at + 1e-9))

    def _end(self, batch: _Batch, *, canceled: bool, done: int = 0) -> None:
        batch.results = [
            {"custom_id": request["custom_id"], "result": self._run(request, canceled and index >= done)} for index, request in enumerate(batch.requests)
        ]
        self.outcomes.update(line["result"]["type"] for line in batch.results)
        batch.status = "ended"
        batch.ended_wall = self._wall() if canceled else batch.created_wall + self.config.batch_processing_seconds

    def _run(self, request: dict[str, Any], canceled: bool) -> dict[str, Any]:
        """One request's result: canceled, expired, errored (the server failed it, or its params are bad), or succeeded."""
        if canceled:
            return {"type": "canceled"}
        params = request["params"]
        draw = random.Random(f"{self.config.seed}-{request['custom_id']}").random()
        if draw < self.config.batch_expired_lines:
            return {"type": "expired"}
        if draw < self.config.batch_expired_lines + self.config.batch_failed_lines:
            return _errored("api_error", "Internal server error")
        problem = anthropic.body_problem(params)
        if problem is not None:
            return _errored("invalid_request_error", problem)
        tokens = 0
        with contextlib.suppress(CountingError):
            tokens = self._counter.count(Endpoint.MESSAGES, params)
        used = anthropic.output_used(params, self.config.output_tokens)
        message = anthropic.message_payload(params, model=params["model"], key=request_key(params), input_tokens=tokens, output_tokens=used)
        return {"type": "succeeded", "message": message}

    def _object(self, batch: _Batch, origin: str) -> dict[str, Any]:
        self._advance(batch)
        counts = dict.fromkeys(_COUNT_NAMES, 0)
        if batch.status == "ended":
            counts.update(Counter(line["result"]["type"] for line in batch.results))
        else:
            counts["processing"] = len(batch.requests)
        ended = batch.status == "ended"
        return {
            "id": batch.id, "type": "message_batch", "processing_status": batch.status, "request_counts": counts,
            "ended_at": _rfc3339(batch.ended_wall) if ended and batch.ended_wall is not None else None,
            "created_at": _rfc3339(batch.created_wall), "expires_at": _rfc3339(batch.created_wall + _WINDOW_SECONDS),
            "archived_at": None, "cancel_initiated_at": _rfc3339(batch.cancel_at) if batch.cancel_at is not None else None,
            "results_url": f"{origin}{BATCHES_PATH}/{batch.id}/results" if ended else None,
        }


def _rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _errored(type_: str, message: str) -> dict[str, Any]:
    return {"type": "errored", "error": {"type": "error", "error": {"type": type_, "message": message}}}


def _error(status: int, type_: str, message: str) -> Reply:
    return json_reply(status, {"type": "error", "error": {"type": type_, "message": message}})
