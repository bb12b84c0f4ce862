"""Google's Gemini API, native (`https://generativelanguage.googleapis.com/v1beta/models/MODEL:generateContent`).

The path names the model and the method (`...:generateContent`), on any host (a gateway may front it). The key
goes in `x-goog-api-key`, read from $GEMINI_API_KEY, else $GOOGLE_API_KEY. Bodies are Gemini's: `contents` (a
list of `{role, parts: [{text}]}`), `systemInstruction`, `tools`, and `generationConfig` (`maxOutputTokens`,
`candidateCount`); answers carry `candidates` and count tokens in `usageMetadata` (`promptTokenCount`,
`candidatesTokenCount`). Limits are per project and model (RPM, input TPM, requests per day), and no answer
states them: Gemini sends no rate-limit headers, so the closed loop learns the rate. A 429 `RESOURCE_EXHAUSTED`
says how long to wait in its body, in a `google.rpc.RetryInfo` detail (`"retryDelay": "45.8s"`), read here by
`wait_in_body`. Its tokenizer is not tiktoken: tokens are estimated at one per `CHARACTERS_PER_TOKEN` characters.

A `google.rpc.QuotaFailure` detail beside it names what ran out: a violation whose `quotaId` is per day
("GenerateRequestsPerDayPerProjectPerModel-FreeTier") means no request passes before midnight Pacific time, however
short the RetryInfo's wait (Gemini asks for seconds even then): `quota_exhausted_for_the_day` says so, and the run
stops for a rerun after the reset instead of retrying all day.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as time_of_day
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..base.durations import parse_duration
from .provider import ErrorDialect, Provider
from .rate_limits import RateLimitReport

__all__ = [
    "PROVIDER", "HOST", "API_KEY_VARIABLES", "METHOD", "CHARACTERS_PER_TOKEN", "TOKENIZER_NOTE", "RETRY_INFO_TYPE",
    "QUOTA_FAILURE_TYPE",
    "serves", "auth_headers", "model_of_url", "wait_in_body", "quota_exhausted_for_the_day", "daily_reset",
    "approximate_tokens", "output_budget", "usage_counts",
]

#: Its own host.
HOST = "generativelanguage.googleapis.com"
#: Where its key is read from when none is given, in this order (Google's own SDK reads them so).
API_KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
#: The method a request URL ends in (":generateContent").
METHOD = "generateContent"
#: Its tokenizer is not tiktoken, nor public offline: a token per this many characters, Google's own rule of thumb.
CHARACTERS_PER_TOKEN = 4
#: Said once per run when its tokens are estimated.
TOKENIZER_NOTE = (
    f"Gemini's tokenizer is not tiktoken: input tokens are estimated at 1 per {CHARACTERS_PER_TOKEN} characters "
    "(the answers' usageMetadata gives the true counts)"
)
#: The error detail that carries the wait a 429 asks for.
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"
#: The error detail that names the quota a 429 ran out of, in its violations' `quotaId`.
QUOTA_FAILURE_TYPE = "type.googleapis.com/google.rpc.QuotaFailure"
#: Where its per-day quotas reset: at midnight Pacific time.
PACIFIC = "America/Los_Angeles"
#: What a request is assumed to generate when its generationConfig sets no maxOutputTokens (for costs only:
#: Gemini's TPM counts input tokens).
DEFAULT_OUTPUT_TOKENS = 1_024

_MODEL_PATH = re.compile(r"/models/(?P<model>[^/:]+):" + METHOD + r"$")


def serves(url: str) -> bool:
    """Any URL whose path ends in `:generateContent`, or any on its host but its OpenAI-compatible API
    (`/v1beta/openai/chat/completions`, which takes OpenAI's bodies and `Authorization: Bearer`)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return path.endswith(":" + METHOD) or (parts.hostname == HOST and "/openai/" not in f"{path}/")


def auth_headers(key: str | None) -> dict[str, str]:
    return {"x-goog-api-key": key} if key is not None else {}


def model_of_url(url: str) -> str | None:
    """The model a request URL names ("gemini-2.0-flash" in ".../models/gemini-2.0-flash:generateContent")."""
    match = _MODEL_PATH.search(urlsplit(url).path.rstrip("/"))
    return match["model"] if match else None


def parse_rate_limits(headers: Mapping[str, str], now: float | None = None) -> RateLimitReport:
    """Gemini states no limits in headers: nothing to read."""
    return RateLimitReport()


def wait_in_body(body: Any) -> float | None:
    """The wait a Gemini error asks for: its `google.rpc.RetryInfo` detail's `retryDelay` ("45.8s", "1s"), in
    seconds; None when the body has none (or a nonsense one)."""
    for detail in _error_details(body):
        if isinstance(detail, dict) and detail.get("@type") == RETRY_INFO_TYPE:
            delay = detail.get("retryDelay")
            if isinstance(delay, str):
                seconds = parse_duration(delay.strip())
                if seconds is not None and seconds >= 0:
                    return seconds
    return None


def _error_details(body: Any) -> list[Any]:
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    return details if isinstance(details, list) else []


def quota_exhausted_for_the_day(body: Any, now: float | None = None) -> str | None:
    """What a 429 body says when a per-day quota ran out (a QuotaFailure violation whose `quotaId` is per day):
    the quota, its value and when it resets (midnight Pacific, `now` epoch seconds, default the wall clock); None
    for any other body, a per-minute quota's included."""
    for detail in _error_details(body):
        if not (isinstance(detail, dict) and detail.get("@type") == QUOTA_FAILURE_TYPE and isinstance(detail.get("violations"), list)):
            continue
        for violation in detail["violations"]:
            quota_id = violation.get("quotaId") if isinstance(violation, dict) else None
            if isinstance(quota_id, str) and "perday" in quota_id.lower():
                return _daily_quota_message(violation, quota_id, datetime.now(UTC).timestamp() if now is None else now)
    return None


def _daily_quota_message(violation: Mapping[str, Any], quota_id: str, now: float) -> str:
    value, dimensions = violation.get("quotaValue"), violation.get("quotaDimensions")
    model = dimensions.get("model") if isinstance(dimensions, Mapping) else None
    quota = quota_id + (f" of {value}" if isinstance(value, (str, int)) and str(value) else "") + (f" for {model}" if isinstance(model, str) else "")
    local, utc = daily_reset(now)
    left = timedelta(seconds=max(0, round(utc.timestamp() - now)))
    return (
        f"Gemini's daily quota {quota} is used up; it resets at midnight Pacific time, {local:%Y-%m-%d %H:%M} {local.tzname()} "
        f"({utc:%Y-%m-%d %H:%M} UTC, in {left}): rerun then to send the rest"
    )


def daily_reset(now: float) -> tuple[datetime, datetime]:
    """The next midnight Pacific time after `now` (epoch seconds), in Pacific time and in UTC: when per-day quotas
    reset. Daylight saving time is the time-zone data's; without that data, the US rule since 2007."""
    zone = _pacific_zone()
    today = datetime.fromtimestamp(now, zone).date()
    midnight = datetime.combine(today + timedelta(days=1), time_of_day(0), tzinfo=zone)
    return midnight, midnight.astimezone(UTC)


class _UsPacific(tzinfo):
    """Pacific time by the US rule (daylight time from 2 am on March's second Sunday to 2 am on November's first):
    for a machine without time-zone data (Windows without the tzdata package)."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=-7 if dt is not None and self._daylight(dt.replace(tzinfo=None)) else -8)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(hours=1 if dt is not None and self._daylight(dt.replace(tzinfo=None)) else 0)

    def tzname(self, dt: datetime | None) -> str:
        return "PDT" if dt is not None and self._daylight(dt.replace(tzinfo=None)) else "PST"

    def fromutc(self, dt: datetime) -> datetime:
        utc = dt.replace(tzinfo=None)
        start, end = _sunday(utc.year, 3, 2) + timedelta(hours=10), _sunday(utc.year, 11, 1) + timedelta(hours=9)  # both in UTC
        return dt + timedelta(hours=-7 if start <= utc < end else -8)

    @staticmethod
    def _daylight(local: datetime) -> bool:
        return _sunday(local.year, 3, 2) + timedelta(hours=2) <= local < _sunday(local.year, 11, 1) + timedelta(hours=2)


def _sunday(year: int, month: int, nth: int) -> datetime:
    """Midnight of the month's `nth` Sunday."""
    first = date(year, month, 1)
    return datetime.combine(first + timedelta(days=(6 - first.weekday()) % 7 + 7 * (nth - 1)), time_of_day(0))


def _pacific_zone() -> tzinfo:
    try:
        return ZoneInfo(PACIFIC)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return _US_PACIFIC


_US_PACIFIC = _UsPacific()


def approximate_tokens(text: str) -> int:
    """Its tokens in a text, estimated: one per `CHARACTERS_PER_TOKEN` characters, rounded up."""
    return -(-len(text) // CHARACTERS_PER_TOKEN)


def output_budget(body: Mapping[str, Any]) -> int:
    """Tokens a request may generate: `generationConfig.maxOutputTokens` (else `DEFAULT_OUTPUT_TOKENS`) times its
    `candidateCount`."""
    config = body.get("generationConfig")
    config = config if isinstance(config, Mapping) else {}
    most, count = config.get("maxOutputTokens"), config.get("candidateCount")
    per_candidate = most if most.__class__ is int and most >= 0 else DEFAULT_OUTPUT_TOKENS
    return per_candidate * (count if count.__class__ is int and count >= 1 else 1)


def usage_counts(answer: Mapping[str, Any]) -> tuple[int, int] | None:
    """(input, output) tokens an answer's `usageMetadata` reports (thinking tokens are billed as output); None if none."""
    usage = answer.get("usageMetadata")
    if not isinstance(usage, Mapping):
        return None
    prompt, output, thoughts = (usage.get(name) for name in ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount"))
    if prompt.__class__ is not int or prompt < 0:
        return None
    output = output if output.__class__ is int and output >= 0 else 0
    return prompt, output + (thoughts if thoughts.__class__ is int and thoughts >= 0 else 0)


#: Its errors are `{"error": {"code": 429, "message", "status": "RESOURCE_EXHAUSTED", "details": [...]}}`.
ERRORS = ErrorDialect(
    relayed_status={"resource_exhausted": 429, "unauthenticated": 401, "permission_denied": 403, "unavailable": 503},
    # "API key not valid. Please pass a valid API key." comes as a 400 INVALID_ARGUMENT: every request fails alike.
    stop_run_words=("api key not valid",),
)

PROVIDER = Provider(
    name="Gemini",
    serves=serves,
    key_variable=API_KEY_VARIABLES[0],
    auth_headers=auth_headers,
    own_hosts=(HOST,),
    parse_rate_limits=parse_rate_limits,
    rate_limit_headers=frozenset(),
    limit_floors={},
    errors=ERRORS,
    probe_bodies={METHOD: {"contents": [{"parts": [{"text": "Hi"}]}], "generationConfig": {"maxOutputTokens": 1}}},
    batch_api_refusal="Gemini's :generateContent is not an endpoint of OpenAI's Batch API (use --mode online)",
    price_provider="google",
    more_key_variables=API_KEY_VARIABLES[1:],
    wait_in_body=wait_in_body,
    usage_in_answer=usage_counts,
    quota_exhausted_for_the_day=quota_exhausted_for_the_day,
    model_in_url=model_of_url,
)
