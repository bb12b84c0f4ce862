"""The mock's Gemini API (POST .../models/MODEL:generateContent): its key header, its answers, its 429s.

What differs from OpenAI, as Google documents it, and what this module copies:

- The path names the model (`/v1beta/models/gemini-2.0-flash:generateContent`); the key comes in
  `x-goog-api-key`; errors read `{"error": {"code": 429, "message": ..., "status": "RESOURCE_EXHAUSTED",
  "details": [...]}}`.
- No rate-limit headers, ever. A 429 says how long to wait only in its body: a `google.rpc.RetryInfo` detail
  (`"retryDelay": "0.1s"`) beside a `google.rpc.QuotaFailure` naming the per-minute quota that ran out.
- The body needs a non-empty `contents` list of objects; the answer has `candidates` and `usageMetadata`.
- Requests per day (`RequestsPerDay`, when configured): counted per Pacific calendar day, reset at midnight
  Pacific time. Past it, the same 429 RESOURCE_EXHAUSTED, its QuotaFailure naming the per-day quota, and a
  RetryInfo asking, as Gemini's does, for seconds (to the next whole minute): the wait says nothing of the day.

Pure but for the day's count, which reads the wall clock it is given.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from .rate_limits import Rejection
from .reply import Reply, json_reply

__all__ = ["METHOD", "serves", "model_of_path", "presented_key", "body_problem", "invalid_api_key", "invalid_request", "rate_limited", "payload",
           "announced_wait", "retry_delay", "RequestsPerDay", "day_quota_exhausted", "PER_DAY_QUOTA_ID"]

METHOD = ":generateContent"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
#: What each of the gate's limits is called in a QuotaFailure's quotaId.
_QUOTA_IDS = {"requests": "GenerateRequestsPerMinutePerProjectPerModel", "tokens": "GenerateContentInputTokensPerModelPerMinute"}
#: The requests-per-day quota's quotaId.
PER_DAY_QUOTA_ID = "GenerateRequestsPerDayPerProjectPerModel"
_REQUESTS_METRIC = "generativelanguage.googleapis.com/generate_content_requests"
#: Per-day quotas reset at midnight Pacific time.
_PACIFIC = ZoneInfo("America/Los_Angeles")
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)


def serves(path: str) -> bool:
    return path.rstrip("/").endswith(METHOD)


def model_of_path(path: str) -> str | None:
    """The model a path names ("gemini-2.0-flash" in "/v1beta/models/gemini-2.0-flash:generateContent")."""
    head = path.rstrip("/")[: -len(METHOD)]
    model = head.rpartition("/models/")[2] if "/models/" in head else ""
    return model or None


def presented_key(request_headers: Mapping[str, str]) -> str | None:
    """The key where Gemini reads it (`x-goog-api-key`); a Bearer header is not one."""
    key = request_headers.get("x-goog-api-key")
    return None if key is None else key.strip()


def _error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> Reply:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return json_reply(code, {"error": error})


def invalid_api_key() -> Reply:
    """Gemini answers a bad key with a 400 INVALID_ARGUMENT, not a 401."""
    return _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")


def invalid_request(message: str) -> Reply:
    return _error(400, "INVALID_ARGUMENT", message)


def announced_wait(seconds: float) -> float:
    """The wait a 429 announces: the gate's, rounded up to the millisecond so it is never short."""
    return math.ceil(seconds * 1000) / 1000


def retry_delay(seconds: float) -> str:
    """A RetryInfo delay as Google writes it ("45.812s")."""
    return f"{announced_wait(seconds):g}s"


def rate_limited(rejection: Rejection, model: str, *, wait: float) -> Reply:
    """429 RESOURCE_EXHAUSTED: `wait` in RetryInfo (the gate's, or the configured hint: real per-minute quotas
    ask for tens of seconds), the quota in QuotaFailure, and no header saying either."""
    quota_id = _QUOTA_IDS.get(rejection.limit_name, _QUOTA_IDS["requests"])
    details: list[dict[str, Any]] = [
        {"@type": QUOTA_FAILURE, "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                                                 "quotaId": quota_id, "quotaDimensions": {"model": model}, "quotaValue": f"{rejection.limit:g}"}]},
        {"@type": RETRY_INFO, "retryDelay": retry_delay(wait)},
    ]
    return _error(429, "RESOURCE_EXHAUSTED", _QUOTA_MESSAGE, details)


class RequestsPerDay:
    """A project's requests per day for one model: the requests admitted on each Pacific calendar day, against
    `limit` (None: no such quota). `turn_the_day` moves its calendar a day on, so a test can reach tomorrow."""

    __slots__ = ("limit", "_wall", "_days_ahead", "_day", "_used")

    def __init__(self, limit: int | None, wall: Callable[[], float]) -> None:
        if limit is not None and limit < 1:
            raise ValueError(f"requests_per_day must be at least 1, got {limit}")
        self.limit = limit
        self._wall = wall
        self._days_ahead = 0
        self._day: date | None = None
        self._used = 0

    def today(self) -> date:
        """The Pacific calendar day it counts in now."""
        return datetime.fromtimestamp(self._wall(), _PACIFIC).date() + timedelta(days=self._days_ahead)

    def _roll(self) -> None:
        today = self.today()
        if today != self._day:
            self._day, self._used = today, 0

    def exhausted(self) -> bool:
        """No request passes before midnight Pacific."""
        self._roll()
        return self.limit is not None and self._used >= self.limit

    def admitted(self) -> None:
        """One more request was let through today."""
        self._roll()
        self._used += 1

    def turn_the_day(self) -> None:
        self._days_ahead += 1

    def seconds_to_next_minute(self) -> float:
        """What Gemini's RetryInfo asks for even when the day's quota is gone: a wait to about the next minute."""
        return max(1.0, 60.0 - self._wall() % 60.0)


def day_quota_exhausted(model: str, limit: int, *, wait: float) -> Reply:
    """429 RESOURCE_EXHAUSTED for the per-day quota: its QuotaFailure violation names it (`PER_DAY_QUOTA_ID`), and
    its RetryInfo asks for `wait` seconds all the same, as Gemini's does."""
    details: list[dict[str, Any]] = [
        {"@type": QUOTA_FAILURE, "violations": [{"quotaMetric": _REQUESTS_METRIC, "quotaId": PER_DAY_QUOTA_ID,
                                                 "quotaDimensions": {"location": "global", "model": model}, "quotaValue": str(limit)}]},
        {"@type": RETRY_INFO, "retryDelay": retry_delay(wait)},
    ]
    message = (
        f"{_QUOTA_MESSAGE}\n* Quota exceeded for metric: {_REQUESTS_METRIC}, limit: {limit}, model: {model}\n"
        f"Please retry in {announced_wait(wait):g}s."
    )
    return _error(429, "RESOURCE_EXHAUSTED", message, details)


def body_problem(body: Any) -> str | None:
    """Why generateContent would answer 400: it needs `contents`, a non-empty list of objects; no OpenAI fields."""
    if not isinstance(body, Mapping):
        return "Invalid JSON payload received. The request body must be a JSON object."
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents or not all(isinstance(content, Mapping) for content in contents):
        return "* GenerateContentRequest.contents: contents is not specified"
    for name in ("messages", "model", "max_tokens"):  # OpenAI's; Gemini refuses fields it does not know
        if name in body:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    return None


def payload(body: Mapping[str, Any], *, model: str, key: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """The 200 body: one candidate of `output_tokens` words, cut off at the request's `maxOutputTokens` (finishReason
    MAX_TOKENS), and its usageMetadata."""
    config = body.get("generationConfig")
    most = config.get("maxOutputTokens") if isinstance(config, Mapping) else None
    cut = isinstance(most, int) and 0 < most < output_tokens
    if isinstance(most, int) and cut:
        output_tokens = most
    finish = "MAX_TOKENS" if cut else "STOP"
    return {
        "candidates": [{"content": {"parts": [{"text": " ".join(["echo"] * output_tokens)}], "role": "model"}, "finishReason": finish, "index": 0}],
        "usageMetadata": {"promptTokenCount": input_tokens, "candidatesTokenCount": output_tokens, "totalTokenCount": input_tokens + output_tokens},
        "modelVersion": model,
        "responseId": hashlib.sha256(key.encode()).hexdigest()[:24],
    }
