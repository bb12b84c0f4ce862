"""OpenAI's API, and every OpenAI-compatible server (vLLM, a gateway, the mock): the default provider.

Its key goes in `Authorization: Bearer`, read from $OPENAI_API_KEY. Its answers state the limits in
`x-ratelimit-*` headers: limits per minute, what remains, and resets as Go durations ("12ms", "6m0s"), or as
bare seconds where a server (Azure) writes them so. Its rate limiter counts a request's prompt plus its whole
completion budget against the tokens-per-minute limit (`Endpoint.charged_tokens`), and counts characters, not
tokenizer tokens: about one token per `CHARACTERS_PER_TOKEN` characters (`estimate_from_characters`).

Flex processing (`"service_tier": "flex"` in a chat or Responses body) is priced at the Batch API's rates, answers
more slowly (its guide advises a 15-minute timeout, `FLEX_REQUEST_TIMEOUT`), and when it has no capacity answers
429 with code `resource_unavailable` ("Resource unavailable. Please try again later."): not the account's rate
limit, and not charged, so it is retried with backoff and moves no rate (`ERRORS.no_capacity_codes`).

`--mode batch` speaks its Files and Batches API: the lines are uploaded as a JSONL input file (purpose "batch"),
a batch is created for it (one endpoint, a 24h window, metadata), asked after until its `status` has ended, and
its output and error files are downloaded (a line per request, found by its custom_id). Its paths, limits,
statuses and line shapes are below; the calls are made by `jobs/batch_api.py`, the lines by `jobs/batch_rows.py`.
Azure keeps the same API elsewhere (`azure.batch_place`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..base.durations import parse_duration
from .provider import ErrorDialect, Provider
from .rate_limits import (
    MIN_STATED_REQUESTS_PER_MINUTE,
    MIN_STATED_TOKENS_PER_MINUTE,
    RateLimitReport,
    StatedLimits,
    count_left,
    exhausted,
    positive_number,
)

__all__ = [
    "PROVIDER", "DEFAULT_URL", "API_KEY_VARIABLE", "CHARACTERS_PER_TOKEN", "parse_rate_limits", "serves", "auth_headers",
    "SERVICE_TIERS", "TIERED_ENDPOINTS", "FLEX_TIER", "FLEX_REQUEST_TIMEOUT", "NO_CAPACITY_CODE", "is_flex", "with_service_tier",
    # Files and Batches (`--mode batch`)
    "FILES", "BATCHES", "BATCHES_URL", "BATCH_MAX_LINES", "BATCH_MAX_BYTES", "FILES_LISTING", "BATCHES_PAGE", "UPLOAD_FILE_FIELD",
    "COMPLETION_WINDOW", "BATCH_RUNNING", "BATCH_ENDED", "BATCH_FAILED", "NO_ROOM_CODES", "RESULT_FILES", "batch_endpoint",
    "endpoint_of_batch", "batch_path", "batch_cancel_path", "file_content_path", "batches_listing", "upload_fields", "batch_create_body",
    "batch_line", "batch_line_size", "batch_status", "batch_input_file", "batch_metadata", "file_name", "batch_running", "batch_ended",
    "batch_refused_for_room", "batch_error_codes", "batch_errors_text", "result_file_ids", "BatchAnswer", "read_batch_answer", "error_message",
]

#: The cookbook script's default endpoint, kept so its users see no change.
DEFAULT_URL = "https://api.openai.com/v1/embeddings"
#: Its API's root, which every endpoint hangs from.
API_ROOT = "https://api.openai.com/v1"
#: A URL to show as an example of one.
EXAMPLE_URL = "https://api.openai.com/v1/chat/completions"
#: Where the key is read from when none is given, by the command and the library alike.
API_KEY_VARIABLE = "OPENAI_API_KEY"
#: Its rule of thumb, and how its rate limiter counts without running the tokenizer.
CHARACTERS_PER_TOKEN = 4
#: Its own API host, which refuses every request without a key.
HOST = "api.openai.com"

#: The body's `service_tier` values the API takes: "auto" (the project's default), "default", "flex", "priority".
SERVICE_TIERS = ("auto", "default", "flex", "priority")
#: The tier that is half price, slower, and sometimes without capacity.
FLEX_TIER = "flex"
#: Seconds a Flex request may take: its guide raises the client's timeout to 15 minutes, as its answers queue.
FLEX_REQUEST_TIMEOUT = 900.0
#: The code of Flex's 429 when it has no capacity now ("Resource unavailable. Please try again later.").
NO_CAPACITY_CODE = "resource_unavailable"

#: Limits Azure states when it does not know them (`x-ratelimit-limit-tokens: -1` beside `x-ratelimit-reset-tokens: 0`):
#: no limit is learned from them, and no warning given.
UNKNOWN_LIMITS = frozenset({-1.0, 0.0})

_LIMIT_FLOORS = {"x-ratelimit-limit-requests": MIN_STATED_REQUESTS_PER_MINUTE, "x-ratelimit-limit-tokens": MIN_STATED_TOKENS_PER_MINUTE}
#: (remaining, limit) header pairs: a remaining 0 beside a stated limit is an empty bucket.
_REMAINING = tuple((f"x-ratelimit-remaining-{name}", f"x-ratelimit-limit-{name}") for name in ("requests", "tokens"))
_HEADERS = frozenset(("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens", *_LIMIT_FLOORS, *(remaining for remaining, _ in _REMAINING)))


def serves(url: str) -> bool:
    """Any URL: every server that is no other provider's is taken to speak OpenAI's API."""
    return True


def auth_headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key is not None else {}


def parse_rate_limits(headers: Mapping[str, str], now: float | None = None) -> RateLimitReport:
    """Its `x-ratelimit-*` headers (resets as Go durations, or bare seconds). A stated limit that is not a finite
    number at least `MIN_STATED_*` is left out, and listed in `ignored`; a limit of -1 or 0 (`UNKNOWN_LIMITS`) is
    Azure saying it does not know, and that limit's remaining and reset headers say nothing either. `now` is not
    needed: resets are relative."""
    limit = StatedLimits(headers, _LIMIT_FLOORS, UNKNOWN_LIMITS)
    limit_requests, limit_tokens = limit("x-ratelimit-limit-requests"), limit("x-ratelimit-limit-tokens")
    unknown = limit.unstated
    requests_known, tokens_known = "x-ratelimit-limit-requests" not in unknown, "x-ratelimit-limit-tokens" not in unknown
    resets = [headers.get("x-ratelimit-reset-requests") if requests_known else None, headers.get("x-ratelimit-reset-tokens") if tokens_known else None]
    bare_seconds = any(text is not None and positive_number(text) is not None for text in resets)
    return RateLimitReport(
        limit_requests=limit_requests,
        limit_tokens=limit_tokens,
        reset_requests=_duration(resets[0]),
        reset_tokens=_duration(resets[1]),
        reset_resolution=1.0 if bare_seconds else 0.001,
        ignored=tuple(limit.ignored),
        exhausted=exhausted(headers, _REMAINING),
        remaining_requests=count_left(headers.get("x-ratelimit-remaining-requests")) if requests_known else None,
        remaining_tokens=count_left(headers.get("x-ratelimit-remaining-tokens")) if tokens_known else None,
        unknown=tuple(unknown),
    )


#: The endpoints (by path) whose bodies take a `service_tier`: Flex and Priority processing are for these alone.
TIERED_ENDPOINTS = frozenset({"chat/completions", "responses"})


def is_flex(body: Mapping[str, object]) -> bool:
    """The request asks for Flex processing."""
    return body.get("service_tier") == FLEX_TIER


def with_service_tier(body: dict[str, object], tier: str | None) -> dict[str, object]:
    """The body with `service_tier` set to `tier` when it sets none of its own (a line's own choice stands)."""
    if tier is None or "service_tier" in body:
        return body
    return {**body, "service_tier": tier}


def _duration(text: str | None) -> float | None:
    return parse_duration(text.strip()) if text else None


#: What its error bodies say (`{"error": {"message", "type", "code"}}`).
ERRORS = ErrorDialect(
    relayed_status={"invalid_api_key": 401, "rate_limit_exceeded": 429, "invalid_request_error": 400, "requests": 429, "tokens": 429},
    # Sent with 429 (quota) but also 400/403 (billing limit, region): any 4xx with one of these stops the run.
    stop_run_codes=frozenset({
        "insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached", "billing_not_active", "access_terminated",
        "unsupported_country_region_territory",
    }),
    # A 429 says which limit: type "tokens" and "... on tokens per min (TPM)", or "requests" and "(RPM)".
    token_limit_types=("tokens",),
    token_limit_words=("tokens per min", "(tpm)"),
    # One request bigger than the whole TPM limit: 'Request too large for gpt-4o ... on tokens per min (TPM): Limit 30000, Requested 36278.'
    too_large_words=("request too large",),
    wait_words=("try again in",),  # "Please try again in 1.574s"
    no_capacity_codes=frozenset({NO_CAPACITY_CODE}),  # Flex: "Resource unavailable. Please try again later."
)

PROVIDER = Provider(
    name="OpenAI",
    serves=serves,
    key_variable=API_KEY_VARIABLE,
    auth_headers=auth_headers,
    own_hosts=(HOST,),
    parse_rate_limits=parse_rate_limits,
    rate_limit_headers=_HEADERS,
    limit_floors=_LIMIT_FLOORS,
    errors=ERRORS,
    probe_bodies={
        "chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1},
        "completions": {"model": "gpt-3.5-turbo-instruct", "prompt": "Hi", "max_tokens": 1},
        "embeddings": {"model": "text-embedding-3-small", "input": "Hi"},
        "responses": {"model": "gpt-4o-mini", "input": "Hi", "max_output_tokens": 16},  # the API's smallest allowed
    },
    price_provider="openai",
)


# --- Files and Batches (`--mode batch`) ---------------------------------------------------------------------

#: Its Files and Batches API's collections, under the API root ("https://api.openai.com/v1" + these).
FILES = "/files"
BATCHES = "/batches"
#: A batch line's url for the batches collection: the API root is where it resolves, less `BATCHES`.
BATCHES_URL = "/v1/batches"
#: The most lines, and bytes, one batch's input file takes (https://platform.openai.com/docs/guides/batch).
BATCH_MAX_LINES = 50_000
BATCH_MAX_BYTES = 200 * 1024**2
#: The input files uploaded, listed in one page: a killed run's upload is looked for there by its filename.
FILES_LISTING = f"{FILES}?purpose=batch&limit=10000"
#: Batches per page of the batches listing (newest first).
BATCHES_PAGE = 100
#: The multipart field an uploaded file goes in (beside `upload_fields`).
UPLOAD_FILE_FIELD = "file"
#: How long a batch may take: the only window the API offers.
COMPLETION_WINDOW = "24h"
#: A batch's `status` while it runs (a cancel passes through "cancelling"), and once it has ended with files to
#: collect (its answers, its failed lines, or both); "failed" is a batch refused as a whole.
BATCH_RUNNING = frozenset({"validating", "in_progress", "finalizing", "cancelling"})
BATCH_ENDED = frozenset({"completed", "expired", "cancelled"})
BATCH_FAILED = "failed"
#: The error code of a batch refused for the enqueued-token limit: created again once an earlier batch ends.
NO_ROOM_CODES = frozenset({"token_limit_exceeded"})
#: An ended batch's files, in the order they are read: its answers (output file), then its failed lines (error file).
RESULT_FILES = ("output_file_id", "error_file_id")
#: Error codes of an error file's line that another try (online) could change: its batch expired or was cancelled first.
_RETRYABLE_LINE_CODES = frozenset({"batch_expired", "batch_cancelled"})
#: A batch line's fields but for their values, as compact JSON (for its size).
_LINE_SHAPE = len('{"custom_id":"","method":"POST","url":"","body":}')


def batch_endpoint(endpoint: str) -> str:
    """How a batch and its lines name an endpoint, from its path ("chat/completions" -> "/v1/chat/completions")."""
    return f"/v1/{endpoint}"


def endpoint_of_batch(name: str) -> str:
    """The endpoint's path, from how a batch names it ("/v1/chat/completions" -> "chat/completions")."""
    return name.removeprefix("/v1/")


def batch_path(batch_id: str) -> str:
    return f"{BATCHES}/{batch_id}"


def batch_cancel_path(batch_id: str) -> str:
    """Where a cancel is POSTed: the batch is "cancelling", then "cancelled" with an output file of what it finished."""
    return f"{BATCHES}/{batch_id}/cancel"


def file_content_path(file_id: str) -> str:
    return f"{FILES}/{file_id}/content"


def batches_listing(after: str | None = None) -> str:
    """One page of the batches listing, newest first; after the batch `after` (a page's `last_id`) when given."""
    return f"{BATCHES}?limit={BATCHES_PAGE}" + (f"&after={after}" if after is not None else "")


def upload_fields() -> dict[str, str]:
    """The upload's form fields but its file (sent as the multipart field `UPLOAD_FILE_FIELD`): a batch input file."""
    return {"purpose": "batch"}


def batch_create_body(input_file_id: str, endpoint: str, metadata: Mapping[str, str]) -> bytes:
    """The create call's JSON body: the uploaded file's lines, for one endpoint, within `COMPLETION_WINDOW`;
    `metadata` is kept with the batch (a killed run's batch is found again by it)."""
    payload = {"input_file_id": input_file_id, "endpoint": endpoint, "completion_window": COMPLETION_WINDOW, "metadata": dict(metadata)}
    return json.dumps(payload).encode()


def batch_line(custom_id: str, url: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """One line of a batch input file: the request's body, POSTed to `url` ("/v1/chat/completions")."""
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def batch_line_size(custom_id_length: int, url: str, body_json: bytes) -> int:
    """The bytes `batch_line` takes in the input file as compact JSON, newline included, from the body's compact JSON."""
    return len(body_json) + custom_id_length + len(url) + _LINE_SHAPE + 1


def batch_status(batch: Mapping[str, Any]) -> str:
    """Its `status`, for a message ("in_progress", "completed", ...)."""
    return str(batch.get("status"))


def batch_input_file(batch: Mapping[str, Any]) -> Any:
    """The id of the input file it was created from."""
    return batch.get("input_file_id")


def batch_metadata(batch: Mapping[str, Any]) -> Mapping[str, Any]:
    """The metadata it was created with (empty when it has none that reads)."""
    metadata = batch.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def file_name(file: Mapping[str, Any]) -> Any:
    """An uploaded file's name, as the files listing gives it."""
    return file.get("filename")


def batch_running(batch: Mapping[str, Any]) -> bool:
    return batch.get("status") in BATCH_RUNNING


def batch_ended(batch: Mapping[str, Any]) -> bool:
    """Ended with files to collect (completed, expired or cancelled): not failed as a whole, not running."""
    return batch.get("status") in BATCH_ENDED


def batch_refused_for_room(batch: Mapping[str, Any]) -> bool:
    """Failed for the enqueued-token limit: it can be created again, from the same file, once room frees."""
    return batch.get("status") == BATCH_FAILED and bool(batch_error_codes(batch) & NO_ROOM_CODES)


def batch_error_codes(batch: Mapping[str, Any]) -> set[str]:
    """The codes of a batch's `errors` (`{"data": [{"code", "message", "line"}]}`)."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    return {error["code"] for error in data or () if isinstance(error, dict) and isinstance(error.get("code"), str)}


def batch_errors_text(batch: Mapping[str, Any]) -> str:
    """Why a batch failed, in its own words: its first three errors, each with the input file's line it names."""
    errors = batch.get("errors")
    data = errors.get("data") if isinstance(errors, dict) else None
    texts = [
        f"{error.get('code')}: {error.get('message')}" + (f" (line {error['line']} of its file)" if error.get("line") else "")
        for error in data or () if isinstance(error, dict)
    ]
    return "; ".join(texts[:3]) or "no reason given"


def result_file_ids(batch: Mapping[str, Any]) -> list[str]:
    """The ids of an ended batch's files to download (`RESULT_FILES`, those it has)."""
    return [file_id for name in RESULT_FILES if isinstance(file_id := batch.get(name), str)]


@dataclass(frozen=True, slots=True)
class BatchAnswer:
    """One line of an output or error file, read: the HTTP answer its request got (`status`, `body`,
    `request_id`), or why it got none; `reason` says why it is not a success, should it not be one."""

    status: int | None
    body: Any = None
    request_id: str | None = None
    reason: str = ""
    #: Another try (online) could change it: a 429 or a 5xx, or a batch that expired or was cancelled first.
    retryable: bool = False


def read_batch_answer(answer: Mapping[str, Any]) -> BatchAnswer:
    """An output or error file's line: `{"custom_id", "response": {"status_code", "request_id", "body"}, "error"}`,
    with a response, or without one and with an `error` (`{"code", "message"}`)."""
    response, error = answer.get("response"), answer.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        status, body = response["status_code"], response.get("body")
        request_id = response.get("request_id") if isinstance(response.get("request_id"), str) else None
        return BatchAnswer(status, body, request_id, f"HTTP {status} {error_message(body)}", status == 429 or status >= 500)
    code = error.get("code") if isinstance(error, dict) else None
    return BatchAnswer(None, reason=f"{code or 'error'}: {error_message({'error': error})}", retryable=code in _RETRYABLE_LINE_CODES)


def error_message(body: Any) -> str:
    """What an error body (`{"error": {"type" or "code", "message"}}`) says, in one line."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") or error.get("code") or ""
        return f"{kind}: {error.get('message', '')}".strip(": ")
    return "(no error message)"
