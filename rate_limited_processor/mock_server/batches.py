"""The mock's Files and Batches endpoints: upload a Batch input file, create a batch, watch it run, download its results.

Paths, as OpenAI serves them:
    POST /v1/files                     multipart/form-data: purpose=batch, file=<the JSONL>
    GET  /v1/files                     newest first (?purpose=, ?limit=, ?after=)
    GET  /v1/files/{id}                the file object
    GET  /v1/files/{id}/content        its bytes
    POST /v1/batches                   {"input_file_id", "endpoint", "completion_window": "24h", "metadata"?}
    GET  /v1/batches                   newest first (?limit=, ?after=)
    GET  /v1/batches/{id}
    POST /v1/batches/{id}/cancel

Azure OpenAI's Batch API (dated versions) is the same under /openai/files and /openai/batches, with
`?api-version=` on every call (none: 404), endpoints named without /v1 ("/chat/completions"), and every line's
body naming its model (a Global Batch deployment).

A batch's life runs on the mock's clock: "validating" for `batch_validation_seconds`, then "failed" (a line the
API would refuse, or the enqueued-token limit reached) or "in_progress", then `batch_processing_seconds` after
it was created "completed", or "expired" when some lines were drawn to expire. Its lines are done one by one at an
even pace meanwhile (`request_counts` shows them); with `batch_stall_at` below 1 it stalls part way and never ends
on its own. A cancel leaves it "cancelling" for `batch_cancelling_seconds`, then "cancelled": as OpenAI's, its
output file holds the lines done by then, and the others are in its error file as `batch_cancelled`. Each line is answered as the
online endpoint answers it (the same echo, the same 400s); `batch_failed_lines` of them get a 500 instead, and
`batch_expired_lines` none (their error is `batch_expired`). Draws are seeded by the line's custom_id, so a
rerun sees the same. Strict about shapes: whatever the real API refuses is refused, with its error.
Pure apart from the clock it is given.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import hashlib
import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..base import strict_json
from ..base.clock import Now
from ..providers.endpoints import Endpoint
from .config import ORGANIZATION, MockConfig
from .counting import CountingError, TokenCounter
from .record import request_key
from .reply import Reply, json_reply
from .responses import body_problem, success_payload

__all__ = ["MockBatches", "FILES_PATH", "BATCHES_PATH", "MAX_BATCH_LINES", "MAX_FILE_BYTES", "COMPLETION_WINDOW"]

FILES_PATH = "/v1/files"
BATCHES_PATH = "/v1/batches"
#: The API's limits on one Batch input file.
MAX_BATCH_LINES = 50_000
MAX_FILE_BYTES = 200 * 1024**2
COMPLETION_WINDOW = "24h"
_WINDOW_SECONDS = 24 * 3600
#: The endpoints OpenAI's Batch API takes (Anthropic's Messages API has a batch API of its own).
_ENDPOINTS = {f"/v1/{endpoint.value}": endpoint for endpoint in Endpoint if not endpoint.is_anthropic}
#: Azure OpenAI's (dated api-version) Batch API: the same endpoints under /openai, named without /v1.
AZURE_ROOT = "/openai"
_AZURE_ENDPOINTS = {name.removeprefix("/v1"): endpoint for name, endpoint in _ENDPOINTS.items()}
_ALL_ENDPOINTS = {**_ENDPOINTS, **_AZURE_ENDPOINTS}
_ACTIVE = ("validating", "in_progress", "finalizing")
_DONE = ("completed", "failed", "expired", "cancelled")
_MAX_METADATA_PAIRS = 16
_MAX_METADATA_VALUE = 512
_LIST_LIMITS = {"files": 10_000, "batches": 100}


@dataclass(slots=True)
class _File:
    id: str
    filename: str
    purpose: str
    content: bytes
    created_at: int

    def record(self) -> dict[str, Any]:
        return {
            "id": self.id, "object": "file", "bytes": len(self.content), "created_at": self.created_at,
            "filename": self.filename, "purpose": self.purpose, "status": "processed", "status_details": None,
        }


@dataclass(slots=True)
class _Batch:
    id: str
    endpoint: str
    input_file_id: str
    metadata: dict[str, str] | None
    created_at: float
    #: What validation found: the errors that fail it, or the lines to run and their tokens.
    errors: list[dict[str, Any]] = field(default_factory=list)
    lines: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    tokens: int = 0
    status: str = "validating"
    times: dict[str, float] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"total": 0, "completed": 0, "failed": 0})


class MockBatches:
    """The files and batches the mock holds, and the answers of their endpoints."""

    __slots__ = ("config", "_clock", "_counter", "_files", "_batches", "_ids", "uploads", "created", "cancels", "answered")

    def __init__(self, config: MockConfig, clock: Now) -> None:
        self.config = config
        self._clock = clock
        self._counter = TokenCounter(config.token_counting, config.token_encoding_name)
        self._files: dict[str, _File] = {}
        self._batches: dict[str, _Batch] = {}
        self._ids = itertools.count(1)
        #: Input files uploaded, and batches created, in order: what a test counts.
        self.uploads: list[str] = []
        self.created: list[str] = []
        #: Batches asked to cancel, in order; and each ended batch's custom_ids it ran (its output and its 500s).
        self.cancels: list[str] = []
        self.answered: dict[str, list[str]] = {}

    def __repr__(self) -> str:
        return f"MockBatches({len(self._files)} files, {len(self._batches)} batches)"

    @staticmethod
    def serves(path: str) -> bool:
        azure_files, azure_batches = AZURE_ROOT + "/files", AZURE_ROOT + "/batches"
        return path in (FILES_PATH, azure_files) or path.startswith((FILES_PATH + "/", BATCHES_PATH, azure_files + "/", azure_batches))

    def summary(self) -> dict[str, Any]:
        """For GET /mock/stats: input files uploaded, batches created, and batches by status."""
        statuses: dict[str, int] = {}
        for batch in self._batches.values():
            self._advance(batch)
            statuses[batch.status] = statuses.get(batch.status, 0) + 1
        answered = sum(len(ids) for ids in self.answered.values())
        return {"input_files": len(self.uploads), "created": len(self.created), "cancels": len(self.cancels), "lines_answered": answered, "by_status": statuses}

    def batch_ids(self) -> list[str]:
        return list(self.created)

    def answer(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str], body: bytes) -> Reply:
        parts = path.strip("/").split("/")  # ["v1", "files", id, "content"], or Azure's ["openai", "files", ...]
        kind, rest = parts[1], parts[2:]
        azure = parts[0] == AZURE_ROOT.strip("/")
        if azure and "api-version" not in query:  # as Azure answers a call without its api-version
            return json_reply(404, {"error": {"code": "404", "message": "Resource not found"}})
        if kind == "files":
            if method == "POST" and not rest:
                return self._upload(headers.get("content-type", ""), body)
            if method == "GET" and not rest:
                return self._list("files", query)
            file = self._files.get(rest[0]) if rest else None
            if method == "GET" and file is not None and len(rest) == 1:
                return json_reply(200, file.record())
            if method == "GET" and file is not None and rest[1:] == ["content"]:
                return Reply(200, file.content, "application/octet-stream")
            if file is None and method == "GET" and len(rest) in (1, 2):
                return _error(404, f"No such File object: {rest[0]}", "invalid_request_error", "id")
        elif kind == "batches":
            if method == "POST" and not rest:
                return self._create(body, _AZURE_ENDPOINTS if azure else _ENDPOINTS)
            if method == "GET" and not rest:
                return self._list("batches", query)
            batch = self._batches.get(rest[0]) if rest else None
            if batch is None and len(rest) in (1, 2):
                return _error(404, f"No batch found with id '{rest[0]}'.", "invalid_request_error", None)
            if batch is not None and method == "GET" and len(rest) == 1:
                return json_reply(200, self._object(batch))
            if batch is not None and method == "POST" and rest[1:] == ["cancel"]:
                return self._cancel(batch)
        return _error(404, f"Invalid URL ({method} {path})", "invalid_request_error", None)

    # --- Files -----------------------------------------------------------------------------------------

    def _upload(self, content_type: str, body: bytes) -> Reply:
        fields = _form_fields(content_type, body)
        if fields is None:
            return _error(400, "Expected a multipart/form-data body with the fields 'purpose' and 'file'.", "invalid_request_error", None)
        purpose = fields.get("purpose")
        upload = fields.get("file")
        if purpose is None or upload is None or upload[0] is None:
            missing = "purpose" if purpose is None else "file"
            return _error(400, f"Missing required parameter: '{missing}'.", "invalid_request_error", missing)
        if purpose[1] != b"batch":
            return _error(400, f"'{purpose[1].decode(errors='replace')}' is not one of ['batch'] - 'purpose'", "invalid_request_error", "purpose")
        if len(upload[1]) > MAX_FILE_BYTES:
            return _error(400, f"File is too large: {len(upload[1]):,} bytes; the most is {MAX_FILE_BYTES:,}.", "invalid_request_error", "file")
        file = _File(self._new_id("file-"), upload[0], "batch", upload[1], int(self._clock()))
        self._files[file.id] = file
        self.uploads.append(file.id)
        return json_reply(200, file.record())

    def _list(self, kind: str, query: Mapping[str, str]) -> Reply:
        items: list[Any] = list(self._files.values()) if kind == "files" else list(self._batches.values())
        if kind == "files" and "purpose" in query:
            items = [item for item in items if item.purpose == query["purpose"]]
        items.reverse()  # newest first
        try:
            limit = int(query.get("limit", "20" if kind == "batches" else "10000"))
        except ValueError:
            return _error(400, "Invalid 'limit': expected an integer.", "invalid_request_error", "limit")
        if not 1 <= limit <= _LIST_LIMITS[kind]:
            return _error(400, f"Invalid 'limit': expected an integer between 1 and {_LIST_LIMITS[kind]}.", "invalid_request_error", "limit")
        after = query.get("after")
        if after is not None:
            ids = [item.id for item in items]
            items = items[ids.index(after) + 1 :] if after in ids else []
        page = items[:limit]
        data = [item.record() if kind == "files" else self._object(item) for item in page]
        return json_reply(200, {
            "object": "list", "data": data, "has_more": len(items) > limit,
            "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None,
        })

    # --- Batches ---------------------------------------------------------------------------------------

    def _create(self, raw: bytes, endpoints: Mapping[str, Endpoint]) -> Reply:
        try:
            body = strict_json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, strict_json.InvalidJSON):
            return _error(400, "We could not parse the JSON body of your request.", "invalid_request_error", None)
        if not isinstance(body, dict):
            return _error(400, "The request body must be a JSON object.", "invalid_request_error", None)
        for name in ("input_file_id", "endpoint", "completion_window"):
            if not isinstance(body.get(name), str):
                return _error(400, f"Missing required parameter: '{name}'.", "invalid_request_error", name)
        unknown = set(body) - {"input_file_id", "endpoint", "completion_window", "metadata", "output_expires_after"}
        if unknown:
            return _error(400, f"Unrecognized request argument supplied: {sorted(unknown)[0]}", "invalid_request_error", None)
        if body["endpoint"] not in endpoints:
            return _error(400, f"Invalid 'endpoint': {body['endpoint']!r} is not one of {sorted(endpoints)}.", "invalid_request_error", "endpoint")
        if body["completion_window"] != COMPLETION_WINDOW:
            return _error(400, f"Invalid 'completion_window': only '{COMPLETION_WINDOW}' is supported.", "invalid_request_error", "completion_window")
        metadata = body.get("metadata")
        if metadata is not None and not _valid_metadata(metadata):
            return _error(400, "Invalid 'metadata': at most 16 string keys and string values of at most 512 characters.", "invalid_request_error", "metadata")
        file = self._files.get(body["input_file_id"])
        if file is None:
            return _error(400, f"No such File object: {body['input_file_id']}", "invalid_request_error", "input_file_id")
        now = self._clock()
        batch = _Batch(self._new_id("batch_"), body["endpoint"], file.id, metadata, now)
        batch.times["created_at"] = now
        self._validate(batch, file)
        if not batch.errors:
            self._check_enqueued(batch, now)
        self._batches[batch.id] = batch
        self.created.append(batch.id)
        return json_reply(200, self._object(batch))

    def _validate(self, batch: _Batch, file: _File) -> None:
        """Read the input file as the API does; the first problems found fail the batch."""
        lines = file.content.splitlines()
        if len(lines) > MAX_BATCH_LINES:
            batch.errors.append(_line_error("too_many_requests", f"The input file has {len(lines):,} lines; a batch takes at most {MAX_BATCH_LINES:,}.", None))
            return
        seen: set[str] = set()
        endpoint = _ALL_ENDPOINTS[batch.endpoint]
        for number, raw in enumerate(lines, start=1):
            problem = self._line_problem(raw, batch, endpoint, seen)
            if problem is not None:
                batch.errors.append(_line_error(problem[0], problem[1], number))
                if len(batch.errors) >= 10:
                    return
        if not batch.lines and not batch.errors:
            batch.errors.append(_line_error("empty_file", "The input file is empty.", None))

    def _line_problem(self, raw: bytes, batch: _Batch, endpoint: Endpoint, seen: set[str]) -> tuple[str, str] | None:
        try:
            line = strict_json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, strict_json.InvalidJSON):
            return "invalid_json_line", "This line is not parseable as valid JSON."
        if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str) or not isinstance(line.get("body"), dict):
            return "invalid_request", "Each line needs a string 'custom_id', 'method', 'url' and an object 'body'."
        if line.get("method") != "POST":
            return "invalid_method", "The only method supported is POST."
        if line.get("url") != batch.endpoint:
            return "mismatched_endpoint", f"The url of this line ({line.get('url')!r}) does not match the batch's endpoint ({batch.endpoint})."
        if line["custom_id"] in seen:
            return "duplicate_custom_id", f"The custom_id {line['custom_id']!r} is not unique in the file."
        seen.add(line["custom_id"])
        model = line["body"].get("model")
        if not isinstance(model, str) and batch.endpoint in _AZURE_ENDPOINTS:
            return "invalid_request", "Each line's body must name the model: the name of a Global Batch deployment."
        if batch.model is None:
            batch.model = model if isinstance(model, str) else None
        elif model != batch.model:
            return "mismatched_model", f"The model of this line ({model!r}) differs from the file's ({batch.model!r}); a batch takes one model."
        if self.config.batch_enqueued_token_limit is not None and body_problem(endpoint, line["body"]) is None:
            with contextlib.suppress(CountingError):  # answered 400 when it runs, as online
                batch.tokens += self._counter.count(endpoint, line["body"])
        batch.lines.append(line)
        return None

    def _check_enqueued(self, batch: _Batch, now: float) -> None:
        """Refuse a batch whose tokens, with those of the model's batches still running, pass the enqueued-token limit."""
        limit = self.config.batch_enqueued_token_limit
        if limit is None:
            return
        enqueued = 0
        for other in self._batches.values():
            self._advance(other)
            if other.status in _ACTIVE and not other.errors and other.model == batch.model:
                enqueued += other.tokens
        if enqueued + batch.tokens > limit:
            batch.errors.append(_line_error(
                "token_limit_exceeded",
                f"Enqueued token limit reached for {batch.model} in organization {ORGANIZATION}. Limit: {limit:,} enqueued tokens. "
                "Please try submitting fewer tokens or waiting until previous batches are completed before submitting more.",
                None,
            ))

    def _cancel(self, batch: _Batch) -> Reply:
        self._advance(batch)
        if batch.status in _DONE or batch.status == "cancelling":
            return _error(409, f"Cannot cancel a batch with status '{batch.status}'.", "invalid_request_error", None)
        now = self._clock()
        batch.times["cancelling_at"] = now
        batch.status = "cancelling"
        self.cancels.append(batch.id)
        return json_reply(200, {**self._object(batch), "status": "cancelling"})  # as the API answers the call, however quick the end

    def _advance(self, batch: _Batch) -> None:
        """Move the batch along its life to where the clock says it is: its lines are done one by one, at an even
        pace from validation to `batch_processing_seconds` (up to `batch_stall_at` of them); a cancelled batch is
        "cancelling" for `batch_cancelling_seconds`, then "cancelled" with the lines done by then in its output."""
        if batch.status in _DONE:
            return
        now = self._clock()
        validated_at = batch.created_at + self.config.batch_validation_seconds
        if now < validated_at and batch.status != "cancelling":
            return
        if batch.errors:
            batch.status = "failed"
            batch.times["failed_at"] = validated_at
            return
        if batch.status == "validating":
            batch.status = "in_progress"
            batch.times["in_progress_at"] = validated_at
            batch.counts["total"] = len(batch.lines)
        if batch.status == "cancelling":
            cancelled_at = batch.times["cancelling_at"] + self.config.batch_cancelling_seconds
            if now >= cancelled_at:
                self._finish(batch, cancelled_at, "cancelled", self._done_by(batch, cancelled_at))
            else:
                batch.counts["completed"] = self._done_by(batch, now)
            return
        done = self._done_by(batch, now)
        batch.counts["completed"] = done
        if done == len(batch.lines):
            self._finish(batch, max(validated_at, batch.created_at + self.config.batch_processing_seconds), None, done)
        elif now >= batch.created_at + _WINDOW_SECONDS:
            self._finish(batch, batch.created_at + _WINDOW_SECONDS, "expired", done)

    def _done_by(self, batch: _Batch, at: float) -> int:
        """How many of the batch's lines (the first ones) are done at `at`, stalled at `batch_stall_at` of them."""
        total = len(batch.lines)
        validated_at = batch.created_at + self.config.batch_validation_seconds
        span = batch.created_at + self.config.batch_processing_seconds - validated_at
        if at < validated_at:
            return 0
        pace = total if span <= 0 else int(total * min(1.0, (at - validated_at) / span))
        return min(pace, int(total * self.config.batch_stall_at + 1e-9))

    def _finish(self, batch: _Batch, at: float, ended: str | None, done: int) -> None:
        """Answer the first `done` lines, the others as cancelled or expired (`ended`), and write the output and error files."""
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        expired_any = False
        endpoint = _ALL_ENDPOINTS[batch.endpoint]
        for number, line in enumerate(batch.lines):
            fate = self._draw(line["custom_id"]) if number < done else (ended or "expired")
            row, ok = self._run_line(line, endpoint, fate)
            expired_any |= fate == "expired"
            (outputs if ok else errors).append(row)
        batch.counts = {"total": len(batch.lines), "completed": len(outputs), "failed": len(errors)}
        status = ended or ("expired" if expired_any else "completed")
        batch.status = status
        batch.times["finalizing_at"] = at
        batch.times[f"{status}_at"] = at
        if outputs:
            batch.output_file_id = self._store(f"batch_{batch.id}_output.jsonl", "batch_output", outputs)
        if errors:
            batch.error_file_id = self._store(f"batch_{batch.id}_error.jsonl", "batch_output", errors)
        # What a test checks against the online record: the lines this batch ran.
        self.answered[batch.id] = [line["custom_id"] for number, line in enumerate(batch.lines) if number < done]

    def _draw(self, custom_id: str) -> str:
        draw = random.Random(f"{self.config.seed}-{custom_id}").random()
        if draw < self.config.batch_expired_lines:
            return "expired"
        if draw < self.config.batch_expired_lines + self.config.batch_failed_lines:
            return "failed"
        return "run"

    def _run_line(self, line: dict[str, Any], endpoint: Endpoint, fate: str) -> tuple[dict[str, Any], bool]:
        """One line's output row, and whether it goes to the output file (else the error file)."""
        custom_id, body = line["custom_id"], line["body"]
        key = request_key(body)
        row_id = f"batch_req_{key[:24]}"
        if fate in ("expired", "cancelled"):
            code = "batch_expired" if fate == "expired" else "batch_cancelled"
            message = "This request could not be executed before the completion window expired." if fate == "expired" else "The batch was cancelled."
            return {"id": row_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}}, False
        if fate == "failed":
            error = {"message": "The server had an error processing your request.", "type": "server_error", "param": None, "code": None}
            status, payload = 500, {"error": error}
        else:
            problem = body_problem(endpoint, body)
            if problem is not None:
                status, payload = 400, {"error": {"message": problem, "type": "invalid_request_error", "param": None, "code": None}}
            else:
                model = body.get("model") if isinstance(body.get("model"), str) else self.config.model
                status, payload = 200, success_payload(endpoint, body, model=model, key=key)
        response = {"status_code": status, "request_id": f"req_{key[:32]}", "body": payload}
        return {"id": row_id, "custom_id": custom_id, "response": response, "error": None}, status == 200

    def _store(self, filename: str, purpose: str, rows: list[dict[str, Any]]) -> str:
        content = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows).encode()
        file = _File(self._new_id("file-"), filename, purpose, content, int(self._clock()))
        self._files[file.id] = file
        return file.id

    def _object(self, batch: _Batch) -> dict[str, Any]:
        self._advance(batch)
        times = {name: (int(batch.times[name]) if name in batch.times else None) for name in _TIMES}
        return {
            "id": batch.id, "object": "batch", "endpoint": batch.endpoint,
            "errors": {"object": "list", "data": batch.errors} if batch.status == "failed" else None,
            "input_file_id": batch.input_file_id, "completion_window": COMPLETION_WINDOW, "status": batch.status,
            "output_file_id": batch.output_file_id, "error_file_id": batch.error_file_id,
            **times, "expires_at": int(batch.created_at + _WINDOW_SECONDS),
            "request_counts": dict(batch.counts), "metadata": batch.metadata,
        }

    def _new_id(self, prefix: str) -> str:
        digest = hashlib.sha256(f"{prefix}{next(self._ids)}".encode()).hexdigest()
        return f"{prefix}{digest[:24]}"


_TIMES = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")


def _error(status: int, message: str, type_: str, param: str | None) -> Reply:
    return json_reply(status, {"error": {"message": message, "type": type_, "param": param, "code": None}})


def _line_error(code: str, message: str, line: int | None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line}


def _valid_metadata(metadata: Any) -> bool:
    return (
        isinstance(metadata, dict) and len(metadata) <= _MAX_METADATA_PAIRS
        and all(isinstance(key, str) and isinstance(value, str) and len(value) <= _MAX_METADATA_VALUE for key, value in metadata.items())
    )


def _form_fields(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]] | None:
    """A multipart/form-data body's fields: name -> (filename, bytes); None when it is not one."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type:
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not message.is_multipart():
        return None
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            return None
        payload = part.get_payload(decode=True)
        fields[name] = (part.get_filename(), payload if isinstance(payload, bytes) else b"")
    return fields
