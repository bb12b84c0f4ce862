"""Error classification and retry timing: pure functions, so plain tables of cases."""

from __future__ import annotations

import ast
import calendar
import dataclasses
import email.utils
import inspect
import json
import random
import time
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rate_limited_processor.base import durations
from rate_limited_processor.core import classification, retry_policy, wait_hints
from rate_limited_processor.core.retry_policy import (
    Decision,
    HTTPOutcome,
    RetryPolicy,
    Verdict,
    classify,
    parse_duration,
    retry_after_seconds,
)
from rate_limited_processor.providers.endpoints import Endpoint


def error_body(message: str | None = None, type: str | None = None, code: Any = None) -> dict[str, Any]:
    """An OpenAI-shaped error body."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


RATE_LIMIT_MESSAGE = (
    "Rate limit reached for gpt-4o-mini in organization org-abc on requests per min (RPM): Limit 500, "
    "Used 500, Requested 1. Please try again in 1.574s. Visit https://platform.openai.com/account/rate-limits"
)
TOO_LARGE_MESSAGE = (
    "Request too large for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, "
    "Requested 36278. The input or output tokens must be reduced in order to run successfully."
)
QUOTA_MESSAGE = "You exceeded your current quota, please check your plan and billing details."
AZURE_429_MESSAGE = (
    "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have "
    "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 6 seconds."
)
BAD_KEY_MESSAGE = (
    "Incorrect API key provided: sk-abc***xyz. You can find your API key at https://platform.openai.com/account/api-keys."
)
HTML_502 = """<html>
<head><title>502 Bad Gateway</title></head>
<body>
    <center><h1>502   Bad Gateway</h1></center>
    <hr><center>cloudflare</center>
</body>
</html>
"""


# --------------------------------------------------------------------------------------------- classify


CLASSIFY_CASES = [
    # (id, outcome, verdict, rate_limited, retry_after)
    ("timeout", HTTPOutcome(None, exception="TimeoutError: no response within 30s"), Verdict.RETRY, False, None),
    ("reset", HTTPOutcome(None, exception="ClientConnectionResetError: Connection reset by peer"), Verdict.RETRY, False, None),
    ("no-response-no-text", HTTPOutcome(None), Verdict.RETRY, False, None),
    ("body-broke-off", HTTPOutcome(200, exception="ClientPayloadError: Response payload is not completed"), Verdict.RETRY, False, None),
    ("200-object", HTTPOutcome(200, body={"id": "chatcmpl-1", "choices": []}), Verdict.SUCCESS, False, None),
    ("200-empty-object", HTTPOutcome(200, body={}), Verdict.SUCCESS, False, None),
    ("201-object", HTTPOutcome(201, body={"id": "x"}), Verdict.SUCCESS, False, None),
    # A 2xx whose body is an error is judged as the error, as the cookbook does.
    ("200-with-error-body-no-status-is-a-server-error", HTTPOutcome(200, body=error_body("odd")), Verdict.RETRY, False, None),
    ("200-with-invalid-request-error", HTTPOutcome(200, body=error_body("bad 'n'", "invalid_request_error", None)), Verdict.FAIL, False, None),
    ("200-with-server-error", HTTPOutcome(200, body=error_body("The server had an error", "server_error", None)), Verdict.RETRY, False, None),
    ("200-with-error-stating-404", HTTPOutcome(200, body={"error": {"message": "no such model", "status": 404}}), Verdict.FAIL, False, None),
    ("200-with-azure-429-code", HTTPOutcome(200, body={"error": {"code": "429", "message": AZURE_429_MESSAGE}}), Verdict.RETRY, True, 6.0),
    ("200-with-rate-limit-code", HTTPOutcome(200, body=error_body(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded")), Verdict.RETRY, True, 1.574),
    ("200-with-quota-error", HTTPOutcome(200, body=error_body(QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota")), Verdict.STOP_RUN, False, None),
    ("200-with-invalid-key", HTTPOutcome(200, body=error_body(BAD_KEY_MESSAGE, "invalid_request_error", "invalid_api_key")), Verdict.STOP_RUN, False, None),
    ("200-with-error-string", HTTPOutcome(200, body={"error": "upstream failed"}), Verdict.RETRY, False, None),
    ("200-vllm-error-object", HTTPOutcome(200, body={"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}), Verdict.FAIL, False, None),
    ("200-with-null-error-is-success", HTTPOutcome(200, body={"choices": [], "error": None}), Verdict.SUCCESS, False, None),
    ("200-with-error-and-should-retry-false", HTTPOutcome(200, {"x-should-retry": "false"}, error_body("odd", "server_error")), Verdict.FAIL, False, None),
    ("200-html", HTTPOutcome(200, body=None, text="<html><body>Proxy login</body></html>"), Verdict.RETRY, False, None),
    ("200-empty", HTTPOutcome(200, body=None, text=""), Verdict.RETRY, False, None),
    ("200-list", HTTPOutcome(200, body=[1, 2], text="[1, 2]"), Verdict.RETRY, False, None),
    ("200-string", HTTPOutcome(200, body="ok", text='"ok"'), Verdict.RETRY, False, None),
    ("200-non-json-with-retry-after", HTTPOutcome(200, {"retry-after": "3"}, None, "<html/>"), Verdict.RETRY, False, 3.0),
    ("401-bad-key", HTTPOutcome(401, body=error_body(BAD_KEY_MESSAGE, "invalid_request_error", "invalid_api_key")), Verdict.STOP_RUN, False, None),
    ("401-html", HTTPOutcome(401, body=None, text="<html>Unauthorized</html>"), Verdict.STOP_RUN, False, None),
    ("401-should-retry-true", HTTPOutcome(401, {"x-should-retry": "true"}, error_body("no key")), Verdict.STOP_RUN, False, None),
    ("429-quota", HTTPOutcome(429, body=error_body(QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota")), Verdict.STOP_RUN, False, None),
    ("429-quota-type-only", HTTPOutcome(429, body=error_body(QUOTA_MESSAGE, "insufficient_quota", None)), Verdict.STOP_RUN, False, None),
    ("429-quota-code-only", HTTPOutcome(429, body=error_body(QUOTA_MESSAGE, None, "insufficient_quota")), Verdict.STOP_RUN, False, None),
    ("429-quota-should-retry-true", HTTPOutcome(429, {"x-should-retry": "true", "retry-after": "1"}, error_body(QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota")), Verdict.STOP_RUN, False, None),
    ("429-credit", HTTPOutcome(429, body=error_body("Credit balance exhausted", None, "credit_balance_exhausted")), Verdict.STOP_RUN, False, None),
    ("429-billing-hard-limit", HTTPOutcome(429, body=error_body("Billing hard limit", None, "billing_hard_limit_reached")), Verdict.STOP_RUN, False, None),
    ("429-billing-not-active", HTTPOutcome(429, body=error_body("Your account is not active", "billing_not_active", None)), Verdict.STOP_RUN, False, None),
    ("429-access-terminated", HTTPOutcome(429, body=error_body("Access terminated", "access_terminated", "access_terminated")), Verdict.STOP_RUN, False, None),
    ("429-quota-code-upper-case", HTTPOutcome(429, body=error_body(QUOTA_MESSAGE, None, "INSUFFICIENT_QUOTA")), Verdict.STOP_RUN, False, None),
    ("400-billing-hard-limit", HTTPOutcome(400, body=error_body("Billing hard limit has been reached", "invalid_request_error", "billing_hard_limit_reached")), Verdict.STOP_RUN, False, None),
    ("403-unsupported-region", HTTPOutcome(403, body=error_body("Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory")), Verdict.STOP_RUN, False, None),
    ("500-quota-code-is-not-stop", HTTPOutcome(500, body=error_body("odd", None, "insufficient_quota")), Verdict.RETRY, False, None),
    ("429-too-large", HTTPOutcome(429, {"retry-after": "1"}, error_body(TOO_LARGE_MESSAGE, "tokens", "rate_limit_exceeded")), Verdict.FAIL, False, None),
    ("429-too-large-lower-case", HTTPOutcome(429, body=error_body("request too large for model", None, None)), Verdict.FAIL, False, None),
    ("429-tokens-too-large", HTTPOutcome(429, body=error_body("The request is too large for your TPM", "tokens", "rate_limit_exceeded")), Verdict.FAIL, False, None),
    ("429-too-large-needs-tokens-or-request", HTTPOutcome(429, body=error_body("Batch too large, slow down", "requests", "rate_limit_exceeded")), Verdict.RETRY, True, None),
    ("429-rate-limit-message-hint", HTTPOutcome(429, body=error_body(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded")), Verdict.RETRY, True, 1.574),
    ("429-rate-limit-ms-hint", HTTPOutcome(429, body=error_body("Rate limit reached. Please try again in 644ms.", "tokens", "rate_limit_exceeded")), Verdict.RETRY, True, 0.644),
    ("429-rate-limit-minutes-hint", HTTPOutcome(429, body=error_body("Rate limit reached. Please try again in 7m12s.", "tokens", "rate_limit_exceeded")), Verdict.RETRY, True, 432.0),
    ("429-retry-after-ms-header", HTTPOutcome(429, {"retry-after-ms": "250"}, error_body(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded")), Verdict.RETRY, True, 0.25),
    ("429-retry-after-header", HTTPOutcome(429, {"retry-after": "20"}, error_body(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded")), Verdict.RETRY, True, 20.0),
    ("429-no-hint", HTTPOutcome(429, body=error_body("Rate limit reached", "requests", "rate_limit_exceeded")), Verdict.RETRY, True, None),
    ("429-overloaded", HTTPOutcome(429, body=error_body("The engine is currently overloaded, please try again later", "server_error", None)), Verdict.RETRY, True, None),
    ("429-azure", HTTPOutcome(429, body={"error": {"code": "429", "message": AZURE_429_MESSAGE}}), Verdict.RETRY, True, 6.0),
    ("429-azure-header-wins", HTTPOutcome(429, {"retry-after": "4"}, {"error": {"code": "429", "message": AZURE_429_MESSAGE}}), Verdict.RETRY, True, 4.0),
    ("429-azure-apim", HTTPOutcome(429, body={"statusCode": 429, "message": "Rate limit is exceeded. Try again in 20 seconds."}), Verdict.RETRY, True, 20.0),
    ("429-html", HTTPOutcome(429, {"retry-after": "5"}, None, "<html>Too Many Requests</html>"), Verdict.RETRY, True, 5.0),
    ("408", HTTPOutcome(408, body=error_body("Request timed out")), Verdict.RETRY, False, None),
    ("409", HTTPOutcome(409, body=error_body("Conflict")), Verdict.RETRY, False, None),
    ("500", HTTPOutcome(500, body=error_body("The server had an error while processing your request.", "server_error")), Verdict.RETRY, False, None),
    ("502-html", HTTPOutcome(502, body=None, text=HTML_502), Verdict.RETRY, False, None),
    ("503-retry-after", HTTPOutcome(503, {"retry-after": "7"}, error_body("The engine is currently overloaded", "server_error")), Verdict.RETRY, False, 7.0),
    ("503-message-hint", HTTPOutcome(503, body=error_body("Overloaded. Please try again in 2s.", "server_error")), Verdict.RETRY, False, 2.0),
    ("504-empty", HTTPOutcome(504, body=None, text=""), Verdict.RETRY, False, None),
    ("599", HTTPOutcome(599, body=None, text="network read timeout"), Verdict.RETRY, False, None),
    ("400-context-length", HTTPOutcome(400, body=error_body("This model's maximum context length is 128000 tokens.", "invalid_request_error", "context_length_exceeded")), Verdict.FAIL, False, None),
    ("400-content-filter", HTTPOutcome(400, {"retry-after": "1"}, error_body("The response was filtered", None, "content_filter")), Verdict.FAIL, False, None),
    ("403", HTTPOutcome(403, body=error_body("You are not allowed to sample from this model", "invalid_request_error")), Verdict.FAIL, False, None),
    ("404", HTTPOutcome(404, body=error_body("The model `gpt-9` does not exist", "invalid_request_error", "model_not_found")), Verdict.FAIL, False, None),
    ("422", HTTPOutcome(422, body={"detail": [{"loc": ["body"], "msg": "field required"}]}, text='{"detail": [...]}'), Verdict.FAIL, False, None),
    ("418", HTTPOutcome(418, body=error_body("I'm a teapot")), Verdict.FAIL, False, None),
    ("400-html", HTTPOutcome(400, body=None, text="<html>Bad Request</html>"), Verdict.FAIL, False, None),
    ("403-html", HTTPOutcome(403, body=None, text="<html>Forbidden by WAF</html>"), Verdict.FAIL, False, None),
    ("404-html", HTTPOutcome(404, body=None, text="<html>Not Found</html>"), Verdict.FAIL, False, None),
    ("422-html", HTTPOutcome(422, body=None, text="<html>Unprocessable</html>"), Verdict.FAIL, False, None),
    ("100", HTTPOutcome(100), Verdict.FAIL, False, None),
    ("302", HTTPOutcome(302, {"location": "https://login.example.com"}, None, ""), Verdict.FAIL, False, None),
    ("304", HTTPOutcome(304), Verdict.FAIL, False, None),
    ("600", HTTPOutcome(600, body=None, text="??"), Verdict.FAIL, False, None),
    # The server's own word: x-should-retry beats the status rules, but not success or STOP_RUN.
    ("should-retry-true-400", HTTPOutcome(400, {"x-should-retry": "true"}, error_body("try me again")), Verdict.RETRY, False, None),
    ("should-retry-true-404-hint", HTTPOutcome(404, {"x-should-retry": "true", "retry-after": "2"}, error_body("later")), Verdict.RETRY, False, 2.0),
    ("should-retry-true-429", HTTPOutcome(429, {"x-should-retry": "true"}, error_body(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded")), Verdict.RETRY, True, 1.574),
    ("should-retry-true-429-too-large", HTTPOutcome(429, {"x-should-retry": "true"}, error_body(TOO_LARGE_MESSAGE, "tokens", "rate_limit_exceeded")), Verdict.RETRY, False, None),
    ("should-retry-true-302", HTTPOutcome(302, {"x-should-retry": "true"}), Verdict.RETRY, False, None),
    ("should-retry-true-mixed-case", HTTPOutcome(400, {"x-should-retry": " True "}, error_body("x")), Verdict.RETRY, False, None),
    ("should-retry-false-500", HTTPOutcome(500, {"x-should-retry": "false"}, error_body("boom", "server_error")), Verdict.FAIL, False, None),
    ("should-retry-false-429", HTTPOutcome(429, {"x-should-retry": "false"}, error_body(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded")), Verdict.FAIL, False, None),
    ("should-retry-false-408", HTTPOutcome(408, {"x-should-retry": "FALSE"}, error_body("timeout")), Verdict.FAIL, False, None),
    ("should-retry-false-200-html", HTTPOutcome(200, {"x-should-retry": "false"}, None, "<html/>"), Verdict.FAIL, False, None),
    ("should-retry-false-200-object", HTTPOutcome(200, {"x-should-retry": "false"}, {"id": "x"}), Verdict.SUCCESS, False, None),
    ("should-retry-false-401", HTTPOutcome(401, {"x-should-retry": "false"}, error_body("bad key")), Verdict.STOP_RUN, False, None),
    ("should-retry-garbage-ignored", HTTPOutcome(500, {"x-should-retry": "maybe"}, error_body("boom")), Verdict.RETRY, False, None),
    ("should-retry-garbage-ignored-400", HTTPOutcome(400, {"x-should-retry": "1"}, error_body("bad")), Verdict.FAIL, False, None),
]


@pytest.mark.parametrize(
    ("outcome", "verdict", "rate_limited", "retry_after"),
    [case[1:] for case in CLASSIFY_CASES],
    ids=[case[0] for case in CLASSIFY_CASES],
)
def test_classify(outcome: HTTPOutcome, verdict: Verdict, rate_limited: bool, retry_after: float | None) -> None:
    decision = classify(outcome, now=0.0)
    assert decision.verdict is verdict
    assert decision.rate_limited is rate_limited
    if retry_after is None:
        assert decision.retry_after is None
    else:
        assert decision.retry_after == pytest.approx(retry_after)
    if outcome.status is not None and outcome.exception is None:
        assert decision.reason.startswith(f"HTTP {outcome.status}")
    assert len(decision.reason) <= retry_policy.MAX_REASON_CHARS
    assert "\n" not in decision.reason


REASON_CASES = [
    (HTTPOutcome(None, exception="TimeoutError: no response within 30s"), "TimeoutError: no response within 30s"),
    (HTTPOutcome(None, exception="ClientOSError: [Errno 104]\n  Connection reset"), "ClientOSError: [Errno 104] Connection reset"),
    (HTTPOutcome(None), "no response"),
    (HTTPOutcome(200, exception="ClientPayloadError: cut off"), "HTTP 200: ClientPayloadError: cut off"),
    (HTTPOutcome(200, body={"id": "x"}, text='{"id": "x"}'), "HTTP 200"),
    (HTTPOutcome(200, body=None, text="  <html>\n\n  <b>hi</b>  </html>\n"), "HTTP 200: non-JSON body: <html> <b>hi</b> </html>"),
    (HTTPOutcome(200, body=None, text=" \n "), "HTTP 200: empty body"),
    (HTTPOutcome(200, body=[1], text="[1]"), "HTTP 200: JSON body is not an object: [1]"),
    (
        HTTPOutcome(429, body=error_body(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded")),
        f"HTTP 429 rate_limit_exceeded: {RATE_LIMIT_MESSAGE}",
    ),
    (
        HTTPOutcome(401, body=error_body(BAD_KEY_MESSAGE, "invalid_request_error", "invalid_api_key")),
        f"HTTP 401 invalid_api_key: {BAD_KEY_MESSAGE}",
    ),
    # No code: the type stands in.
    (HTTPOutcome(500, body=error_body("The server had an error", "server_error")), "HTTP 500 server_error: The server had an error"),
    # Neither: just the message.
    (HTTPOutcome(400, body=error_body("Missing model")), "HTTP 400: Missing model"),
    # No message: just the code.
    (HTTPOutcome(400, body=error_body(None, None, "some_code")), "HTTP 400 some_code"),
    # Azure repeats the status as the code; say it once.
    (HTTPOutcome(429, body={"error": {"code": "429", "message": AZURE_429_MESSAGE}}), f"HTTP 429: {AZURE_429_MESSAGE}"),
    # Integer codes are fine.
    (HTTPOutcome(400, body=error_body("bad", None, 1234)), "HTTP 400 1234: bad"),
    # vLLM-style: fields at the top level, code equal to the status.
    (HTTPOutcome(400, body={"object": "error", "message": "max_tokens too large", "type": "BadRequestError", "code": 400}), "HTTP 400 BadRequestError: max_tokens too large"),
    (HTTPOutcome(429, body={"statusCode": 429, "message": "Rate limit is exceeded. Try again in 20 seconds."}), "HTTP 429: Rate limit is exceeded. Try again in 20 seconds."),
    # error as a bare string; a list of error objects; FastAPI's "detail".
    (HTTPOutcome(500, body={"error": "Something went wrong"}), "HTTP 500: Something went wrong"),
    (HTTPOutcome(400, body=[error_body("first", "invalid_request_error", "bad_param"), error_body("second")]), "HTTP 400 bad_param: first"),
    (HTTPOutcome(404, body={"detail": "Not Found"}), "HTTP 404: Not Found"),
    # JSON with nothing we recognise: show the text.
    (HTTPOutcome(500, body={"foo": "bar"}, text='{"foo":\n "bar"}'), 'HTTP 500: {"foo": "bar"}'),
    (HTTPOutcome(500, body={"error": 42}, text=""), "HTTP 500"),
    (HTTPOutcome(302, body=None, text=""), "HTTP 302: empty body"),
]


@pytest.mark.parametrize(("outcome", "reason"), REASON_CASES)
def test_reason_text(outcome: HTTPOutcome, reason: str) -> None:
    assert classify(outcome).reason == reason


def test_reason_for_html_page_is_collapsed_and_short() -> None:
    page = HTML_502 + "<p>" + "filler " * 2_000 + "</p>"
    reason = classify(HTTPOutcome(502, body=None, text=page)).reason
    prefix = "HTTP 502: non-JSON body: "
    assert reason.startswith(prefix + "<html> <head><title>502 Bad Gateway</title></head> <body> <center><h1>502 Bad Gateway")
    assert "  " not in reason
    # The snippet is cut at MAX_BODY_SNIPPET_CHARS; a space at the cut is dropped.
    assert retry_policy.MAX_BODY_SNIPPET_CHARS - 1 <= len(reason) - len(prefix) <= retry_policy.MAX_BODY_SNIPPET_CHARS


def test_long_message_is_truncated() -> None:
    message = "word " * 400
    reason = classify(HTTPOutcome(400, body=error_body(message, None, "bad"))).reason
    assert len(reason) == retry_policy.MAX_REASON_CHARS
    assert reason.startswith("HTTP 400 bad: word word")
    assert reason.endswith("...")


def test_short_message_is_not_truncated() -> None:
    message = "x" * 100
    assert classify(HTTPOutcome(400, body=error_body(message))).reason == f"HTTP 400: {message}"


def test_classify_http_date_hint_uses_now() -> None:
    when = "Wed, 21 Oct 2015 07:28:00 GMT"
    epoch = calendar.timegm((2015, 10, 21, 7, 28, 0))
    decision = classify(HTTPOutcome(503, {"retry-after": when}, error_body("busy")), now=epoch - 12.5)
    assert decision.retry_after == pytest.approx(12.5)


def test_success_ignores_hints() -> None:
    decision = classify(HTTPOutcome(200, {"retry-after": "9", "x-should-retry": "true"}, {"id": "x"}))
    assert decision == Decision(Verdict.SUCCESS, "HTTP 200")


# ------------------------------------------------------------------------------------------ parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1.574s", 1.574),
        ("644ms", 0.644),
        ("7m12s", 432.0),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("12us", 12e-6),
        ("12µs", 12e-6),  # micro sign
        ("12μs", 12e-6),  # greek mu
        ("500ns", 500e-9),
        ("0s", 0.0),
        ("2h", 7200.0),
        ("1.5h", 5400.0),
        ("1m30s", 90.0),
        ("1m1ms", 60.001),
        ("1s500ms", 1.5),
        (".5s", 0.5),
        ("3.s", 3.0),
        ("10", 10.0),
        ("0.5", 0.5),
        ("0", 0.0),
        ("  1.5s  ", 1.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    ["abc", "", "   ", "s", "ms", "-1s", "-5", "+5", "1.5.3s", "10x", "1d", "nan", "inf", "1e3", "10 s", "1m 30s", "1S", "1,5s", "s1"],
)
def test_parse_duration_rejects(text: str) -> None:
    assert parse_duration(text) is None


def test_parse_duration_rejects_overflow() -> None:
    assert parse_duration("9" * 400) is None
    assert parse_duration("9" * 400 + "h") is None


@given(
    hours=st.integers(0, 99),
    minutes=st.integers(0, 59),
    seconds=st.integers(0, 59),
    millis=st.integers(0, 999),
)
def test_parse_duration_go_format_round_trip(hours: int, minutes: int, seconds: int, millis: int) -> None:
    text = f"{hours}h{minutes}m{seconds}.{millis:03d}s"
    expected = hours * 3600 + minutes * 60 + seconds + millis / 1000
    assert parse_duration(text) == pytest.approx(expected)


# ------------------------------------------------------------------------------------- retry_after_seconds

HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"
HTTP_DATE_EPOCH = float(calendar.timegm((2015, 10, 21, 7, 28, 0)))


@pytest.mark.parametrize(
    ("headers", "message", "expected"),
    [
        # 1. retry-after-ms beats everything.
        ({"retry-after-ms": "1500", "retry-after": "9"}, "Please try again in 3s", 1.5),
        ({"retry-after-ms": "250.5"}, "", 0.2505),
        ({"retry-after-ms": "0"}, "Please try again in 3s", 0.0),
        # 2a. retry-after in seconds beats the message.
        ({"retry-after": "9"}, "Please try again in 3s", 9.0),
        ({"retry-after": "0.5"}, "", 0.5),
        ({"retry-after": " 2 "}, "", 2.0),
        # 2b. retry-after as a date beats the message.
        ({"retry-after": HTTP_DATE}, "Please try again in 3s", 30.0),
        # Nonsense in a header is skipped, not trusted: the next source applies.
        ({"retry-after-ms": "-1", "retry-after": "4"}, "", 4.0),
        ({"retry-after-ms": "nan", "retry-after": "4"}, "", 4.0),
        ({"retry-after-ms": "inf", "retry-after": "4"}, "", 4.0),
        ({"retry-after-ms": "soon", "retry-after": "4"}, "", 4.0),
        ({"retry-after": "-5"}, "Please try again in 3s", 3.0),
        ({"retry-after": "NaN"}, "Please try again in 3s", 3.0),
        ({"retry-after": "later"}, "Please try again in 3s", 3.0),
        # 3. The message: OpenAI's Go durations.
        ({}, "Rate limit reached. Please try again in 1.574s. Visit https://...", 1.574),
        ({}, "Please try again in 644ms.", 0.644),
        ({}, "Please try again in 7m12s.", 432.0),
        ({}, "Please try again in 6m0s", 360.0),
        ({}, "please TRY AGAIN IN 20s", 20.0),
        # Azure's forms.
        ({}, AZURE_429_MESSAGE, 6.0),
        ({}, "Rate limit is exceeded. Try again in 20 seconds.", 20.0),
        ({}, "Please retry after 1 second.", 1.0),
        ({}, "Please Retry After 2.5 Seconds", 2.5),
        ({}, "try again in 20seconds", 20.0),
        # Nothing that applies.
        ({}, "", None),
        ({}, "Please try again later.", None),
        ({}, "Please try again in 5 minutes.", None),
        ({}, "Please try again in 5minutes.", None),
        ({}, "Limit 500, Used 500, Requested 1.", None),
        ({"retry-after": "-5"}, "", None),
        ({"retry-after-ms": "-5"}, "", None),
        ({"x-ratelimit-reset-requests": "1.574s"}, "", None),  # not a wait request: the time to full refill
    ],
)
def test_retry_after_seconds(headers: dict[str, str], message: str, expected: float | None) -> None:
    result = retry_after_seconds(headers, message, now=HTTP_DATE_EPOCH - 30)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


@pytest.mark.parametrize(
    ("date", "now", "expected"),
    [
        (HTTP_DATE, HTTP_DATE_EPOCH - 45.0, 45.0),
        (HTTP_DATE, HTTP_DATE_EPOCH, 0.0),
        (HTTP_DATE, HTTP_DATE_EPOCH + 100.0, 0.0),  # in the past: go now, not a negative wait
        ("Wed, 21 Oct 2015 08:28:00 +0100", HTTP_DATE_EPOCH - 10.0, 10.0),  # same instant, other zone
        ("Wed, 21 Oct 2015 07:28:00 -0000", HTTP_DATE_EPOCH - 10.0, 10.0),  # "-0000" means UTC
    ],
)
def test_retry_after_http_date_relative_to_now(date: str, now: float, expected: float) -> None:
    assert retry_after_seconds({"retry-after": date}, now=now) == pytest.approx(expected)


@pytest.fixture
def local_zone_not_utc(monkeypatch: pytest.MonkeyPatch):
    """Run in a local zone five hours from UTC (a POSIX TZ string needs no tz database)."""
    monkeypatch.setenv("TZ", "EST+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_retry_after_zoneless_date_is_utc_not_local(local_zone_not_utc: None) -> None:
    # "-0000" gives a naive datetime; reading it as local time would be five hours off.
    date = "Wed, 21 Oct 2015 07:28:00 -0000"
    assert retry_after_seconds({"retry-after": date}, now=HTTP_DATE_EPOCH - 10.0) == pytest.approx(10.0)


def test_retry_after_http_date_defaults_to_wall_clock() -> None:
    date = email.utils.formatdate(time.time() + 100, usegmt=True)
    result = retry_after_seconds({"retry-after": date})
    assert result is not None
    assert 95.0 <= result <= 100.0


# ----------------------------------------------------------------------------------------------- RetryPolicy


def always(value: float):
    return lambda: value


def test_retry_policy_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.initial_delay, policy.max_delay, policy.rate_limit_cooldown) == (5, 1.0, 60.0, 15.0)


@pytest.mark.parametrize("max_attempts", [0, -1])
def test_max_attempts_must_be_positive(max_attempts: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=max_attempts)


def test_one_attempt_is_allowed() -> None:
    assert RetryPolicy(max_attempts=1).max_attempts == 1


@pytest.mark.parametrize("name", ["initial_delay", "max_delay", "rate_limit_cooldown"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_delays_must_be_finite_and_non_negative(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=name):
        RetryPolicy(**{name: value})  # type: ignore[arg-type]


def test_zero_delays_are_allowed_for_tests() -> None:
    policy = RetryPolicy(initial_delay=0.0, rate_limit_cooldown=0.0)
    assert policy.backoff(3, random=always(0.7)) == 0.0


@pytest.mark.parametrize(
    ("attempt", "base"),
    [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 16.0), (6, 32.0), (7, 60.0), (8, 60.0), (50, 60.0)],
)
def test_backoff_grows_exponentially_up_to_the_cap(attempt: int, base: float) -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=60.0)
    # Jitter factor runs from 0.5 (random() == 0) towards 1.0 (random() -> 1).
    assert policy.backoff(attempt, random=always(0.0)) == pytest.approx(base * 0.5)
    high = policy.backoff(attempt, random=always(0.999999))
    assert base * 0.99 < high < base


def test_backoff_uses_initial_delay() -> None:
    policy = RetryPolicy(initial_delay=0.25, max_delay=100.0)
    assert [policy.backoff(n, random=always(0.0)) for n in (1, 2, 3, 4)] == pytest.approx([0.125, 0.25, 0.5, 1.0])


def test_backoff_huge_attempt_does_not_overflow() -> None:
    assert RetryPolicy(max_delay=60.0).backoff(100_000, random=always(0.0)) == pytest.approx(30.0)


@pytest.mark.parametrize("attempt", [0, -3])
def test_backoff_counts_failed_attempts_from_one(attempt: int) -> None:
    with pytest.raises(ValueError):
        RetryPolicy().backoff(attempt)


def test_backoff_jitter_spreads_within_bounds() -> None:
    policy = RetryPolicy(initial_delay=1.0, max_delay=60.0)
    rng = random.Random(1234)
    delays = [policy.backoff(4, random=rng.random) for _ in range(500)]
    assert all(4.0 <= d < 8.0 for d in delays)
    # Jitter actually spreads: both halves of the range are used.
    assert min(delays) < 5.0 and max(delays) > 7.0


def test_backoff_default_random_is_jittered() -> None:
    delays = {RetryPolicy().backoff(3) for _ in range(50)}
    assert len(delays) > 1
    assert all(2.0 <= d < 4.0 for d in delays)


RATE_LIMITED_WITH_HINT = Decision(Verdict.RETRY, "HTTP 429", retry_after=2.5, rate_limited=True)
RATE_LIMITED_NO_HINT = Decision(Verdict.RETRY, "HTTP 429", rate_limited=True)
SERVER_ERROR_WITH_HINT = Decision(Verdict.RETRY, "HTTP 503", retry_after=0.25)
SERVER_ERROR_NO_HINT = Decision(Verdict.RETRY, "HTTP 500")


@pytest.mark.parametrize(
    ("decision", "attempt", "expected"),
    [
        # A hint is used as given: not shortened, not replaced by a longer backoff or the cooldown.
        (RATE_LIMITED_WITH_HINT, 1, 2.5),
        (RATE_LIMITED_WITH_HINT, 6, 2.5),
        (SERVER_ERROR_WITH_HINT, 6, 0.25),
        (Decision(Verdict.RETRY, "HTTP 503", retry_after=120.0), 1, 120.0),  # beyond max_delay: still honoured
        (Decision(Verdict.RETRY, "HTTP 503", retry_after=0.0), 3, 0.0),
        # A rate limit without a hint backs off like anything else (the pause, not this, is what it waits: see pause_for).
        (RATE_LIMITED_NO_HINT, 1, 0.5),
        # Otherwise exponential backoff (random() == 0 here, so the low end of the jitter).
        (SERVER_ERROR_NO_HINT, 1, 0.5),
        (SERVER_ERROR_NO_HINT, 3, 2.0),
        (SERVER_ERROR_NO_HINT, 10, 30.0),
    ],
)
def test_retry_delay(decision: Decision, attempt: int, expected: float) -> None:
    assert RetryPolicy().retry_delay(decision, attempt, random=always(0.0)) == pytest.approx(expected)


def test_retry_delay_passes_random_to_backoff() -> None:
    policy = RetryPolicy()
    assert policy.retry_delay(SERVER_ERROR_NO_HINT, 2, random=always(0.5)) == pytest.approx(2.0 * 0.75)


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        (RATE_LIMITED_WITH_HINT, 2.5),  # the server's hint, whatever the hint-less pause would be
        (RATE_LIMITED_NO_HINT, 0.3),  # no hint: the pause the rate controller asks for
        (Decision(Verdict.RETRY, "HTTP 429", retry_after=0.0, rate_limited=True), 0.0),
        (SERVER_ERROR_WITH_HINT, None),
        (SERVER_ERROR_NO_HINT, None),
        (Decision(Verdict.FAIL, "HTTP 400"), None),
        (Decision(Verdict.STOP_RUN, "HTTP 401"), None),
    ],
)
def test_pause_for(decision: Decision, expected: float | None) -> None:
    assert RetryPolicy().pause_for(decision, hintless=0.3) == expected


def test_a_hintless_pause_never_exceeds_the_configured_cooldown() -> None:
    assert RetryPolicy(rate_limit_cooldown=7.0).pause_for(RATE_LIMITED_NO_HINT, hintless=60.0) == 7.0
    assert RetryPolicy(rate_limit_cooldown=7.0).pause_for(RATE_LIMITED_NO_HINT, hintless=0.2) == 0.2


# ---------------------------------------------------------------------------------------- end to end, values


def test_azure_429_end_to_end() -> None:
    outcome = HTTPOutcome(429, {}, {"error": {"code": "429", "message": AZURE_429_MESSAGE}})
    decision = classify(outcome)
    policy = RetryPolicy()
    assert policy.pause_for(decision, hintless=0.1) == 6.0
    assert policy.retry_delay(decision, 1, random=always(0.0)) == 6.0
    assert decision.on_tokens  # "exceeded token rate limit"


def test_openai_429_without_hint_end_to_end() -> None:
    decision = classify(HTTPOutcome(429, {}, error_body("Rate limit reached", "requests", "rate_limit_exceeded")))
    policy = RetryPolicy(rate_limit_cooldown=15.0)
    assert policy.pause_for(decision, hintless=0.25) == 0.25
    assert decision.rate_limited and not decision.on_tokens


def test_policy_is_frozen_and_slotted() -> None:
    assert RetryPolicy.__dataclass_params__.frozen  # type: ignore[attr-defined]
    assert "__slots__" in RetryPolicy.__dict__
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().max_attempts = 1  # type: ignore[misc]


def test_per_attempt_values_are_records() -> None:
    """Slotted, equal and hashed by their fields, and frozen to the type checker: mypy checks this file, and
    the ignore below would be unused, an error, if assigning a field were allowed."""
    decision = Decision(Verdict.RETRY, "x", retry_after=1.0)
    twin = dataclasses.replace(decision)
    assert twin == decision and twin is not decision and hash(twin) == hash(decision)
    assert dataclasses.replace(decision, retry_after=2.0) != decision
    decision.reason = "changed"  # type: ignore[misc]
    for cls in (Decision, HTTPOutcome):
        assert "__slots__" in cls.__dict__
    assert HTTPOutcome(200, {"x-request-id": "a"}) == HTTPOutcome(200, {"x-request-id": "a"})


@pytest.mark.parametrize("module", [retry_policy, classification, wait_hints, durations])
def test_module_is_pure(module: ModuleType) -> None:
    """No event loop, no network, no files: the loop composes this, not the other way round."""
    tree = ast.parse(inspect.getsource(module))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"asyncio", "aiohttp", "socket", "os", "io", "pathlib", "logging", "threading"}


# ------------------------------------------------------------------- what a success is, per endpoint

ANSWERS: dict[Endpoint, dict[str, Any]] = {
    Endpoint.CHAT_COMPLETIONS: {"id": "chatcmpl-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]},
    Endpoint.COMPLETIONS: {"id": "cmpl-1", "choices": [{"index": 0, "text": "hi"}]},
    Endpoint.EMBEDDINGS: {"object": "list", "data": [{"index": 0, "embedding": [0.1]}]},
    Endpoint.RESPONSES: {"id": "resp_1", "status": "completed", "output": []},
    Endpoint.MESSAGES: {"id": "msg_1", "type": "message", "content": [{"type": "text", "text": "hi"}], "usage": {"output_tokens": 1}},
    Endpoint.GENERATE_CONTENT: {"candidates": [{"content": {"parts": [{"text": "hi"}], "role": "model"}}], "usageMetadata": {"promptTokenCount": 1}},
}


@pytest.mark.parametrize("endpoint", list(Endpoint))
def test_a_2xx_is_a_success_only_with_the_answer_its_endpoint_promises(endpoint: Endpoint) -> None:
    assert classify(HTTPOutcome(200, body=ANSWERS[endpoint]), endpoint=endpoint).verdict is Verdict.SUCCESS
    for other in Endpoint:
        if "choices" in ANSWERS[other] and "choices" in ANSWERS[endpoint] or other is endpoint:
            continue
        wrong = classify(HTTPOutcome(200, body=ANSWERS[other], text=json.dumps(ANSWERS[other])), endpoint=endpoint)
        assert wrong.verdict is Verdict.RETRY, (endpoint, other)  # another endpoint's shape is not this one's answer
        assert wrong.reason.startswith(f"HTTP 200: not a /{endpoint.value} answer")
    liars: list[dict[str, Any]] = [{}, {"choices": None, "data": {}, "output": "none"}, {"ok": True}]
    for liar in liars:
        assert classify(HTTPOutcome(200, body=liar), endpoint=endpoint).verdict is Verdict.RETRY


def test_a_background_response_is_a_success_with_its_status_alone() -> None:
    queued = {"id": "resp_1", "object": "response", "status": "queued"}
    assert classify(HTTPOutcome(200, body=queued), endpoint=Endpoint.RESPONSES).verdict is Verdict.SUCCESS


def test_a_200_error_body_is_reported_with_the_body_s_own_message() -> None:
    decision = classify(HTTPOutcome(200, body=error_body("The model is overloaded", "server_error")), endpoint=Endpoint.CHAT_COMPLETIONS)
    assert decision.verdict is Verdict.RETRY
    assert decision.reason == "HTTP 200 (an error body) server_error: The model is overloaded"


def test_an_unreadable_200_is_retried_and_says_why() -> None:
    outcome = HTTPOutcome(200, body=None, text="[[[[[[", unreadable="nested deeper than 200 levels")
    decision = classify(outcome, endpoint=Endpoint.EMBEDDINGS)
    assert decision.verdict is Verdict.RETRY
    assert decision.reason == "HTTP 200: unreadable JSON body (nested deeper than 200 levels): [[[[[["
