"""Error classification: turn one HTTP attempt into a verdict, and say why in one line.

`classify` is the one place that turns an outcome into SUCCESS, RETRY, FAIL or STOP_RUN; it reads like
openai-python's `_should_retry`, one case per line. What a provider's error bodies say (its codes, the words
of its 429s, its run-stopping errors) is the provider's (`providers.registry.ERRORS`, from each provider
module); the server's wait hint is read by `wait_hints.retry_after_seconds`.

Pure: no I/O, no asyncio; the only clock read (for an HTTP-date `retry-after`) can be replaced by passing `now`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from ..base.errors import NoAnswer
from ..base.records import record
from ..providers.endpoints import Endpoint
from ..providers.registry import ERRORS, quota_exhausted_for_the_day
from .wait_hints import retry_after_seconds

__all__ = ["Verdict", "HTTPOutcome", "Decision", "classify", "answer_problem", "STOP_RUN_ERROR_CODES", "MAX_REASON_CHARS", "MAX_BODY_SNIPPET_CHARS"]

#: Error codes (or types) after which every request will fail the same way: no quota, no billing, no access.
#: Any 4xx with one counts (OpenAI sends them with 429, but also 400 and 403). Each provider lists its own.
STOP_RUN_ERROR_CODES = ERRORS.stop_run_codes

#: Longest reason kept, in characters; API messages run to a few hundred, HTML pages to many thousand.
MAX_REASON_CHARS = 500
#: How much of a non-JSON body goes into a reason.
MAX_BODY_SNIPPET_CHARS = 200

_WHITESPACE_RE = re.compile(r"\s+")


#: What every successful answer of an endpoint carries: a field, and its JSON type.
_ANSWER_FIELDS: Mapping[Endpoint, tuple[tuple[str, type], ...]] = {
    Endpoint.CHAT_COMPLETIONS: (("choices", list),),
    Endpoint.COMPLETIONS: (("choices", list),),
    Endpoint.EMBEDDINGS: (("data", list),),
    # A finished response has its output; one still running in the background has only its status.
    Endpoint.RESPONSES: (("output", list), ("status", str)),
    Endpoint.MESSAGES: (("content", list),),
    Endpoint.GENERATE_CONTENT: (("candidates", list),),
}


class Verdict(enum.Enum):
    """What to do with a request after one attempt."""

    #: 2xx with the endpoint's answer (see `answer_problem`).
    SUCCESS = "success"
    #: Try again later (`decisions.next_step` checks the attempts left).
    RETRY = "retry"
    #: Record as failed now, no more attempts.
    FAIL = "fail"
    #: Every request will fail the same way (bad key, no quota): stop dispatching the whole run.
    STOP_RUN = "stop_run"


@record
class HTTPOutcome:
    """What one attempt produced. Built by the HTTP module; headers keys are lower-case."""

    #: None when no response arrived (connection error, reset, timeout).
    status: int | None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Parsed JSON body, or None when the body was not JSON.
    body: Any = None
    #: Raw body text (may be truncated by the caller), for messages.
    text: str = ""
    #: E.g. "TimeoutError: no response within 30s" (already scrubbed of secrets).
    exception: str | None = None
    #: Why no answer came, when none did.
    no_answer: NoAnswer | None = None
    #: Why a body that looked like JSON could not be read ("nested deeper than 200 levels"), when so.
    unreadable: str | None = None


@record
class Decision:
    """The verdict on one attempt, why, and what the server said about waiting."""

    verdict: Verdict
    #: One line for logs and the output file: HTTP status, error code and the API's own message.
    reason: str
    #: Seconds the server asked us to wait, if it said.
    retry_after: float | None = None
    #: A rate-limit 429 (not "request too large", not quota): every sender pauses.
    rate_limited: bool = False
    #: That 429 names the token limit (OpenAI's type "tokens", "... tokens per min (TPM)", Anthropic's input
    #: tokens), not the request limit...
    on_tokens: bool = False
    #: ...or the output-token limit (Anthropic's "... output tokens per minute").
    on_output_tokens: bool = False
    #: The failure is about the URL, not the line: nothing listens there, the name does not resolve, TLS
    #: fails, or the path does not exist (a 404 or 405 that names no model). Every request would fail alike.
    about_the_endpoint: bool = False
    #: A 429 that says the provider has no capacity now (OpenAI Flex's `resource_unavailable`), not the account's
    #: rate limit: this request alone backs off, no sender pauses, and the rate stays.
    no_capacity: bool = False


def classify(outcome: HTTPOutcome, *, endpoint: Endpoint | None = None, now: float | None = None) -> Decision:
    """Turn one attempt's outcome into a decision.

    Precedence, top to bottom: no response, success, the three run-stopping errors, the server's
    `x-should-retry`, then status rules. Run-stopping errors beat `x-should-retry: true` because a bad key
    or an empty account fails every request however often we retry; a 2xx with the endpoint's answer is a
    success whatever the header says. A 2xx is a success only with the answer `endpoint` promises (see
    `answer_problem`; any JSON object when no endpoint is given) and no error in it: a 2xx whose body is an
    error is judged as the status that error stands for. `now` (epoch seconds) is only for an HTTP-date
    `retry-after`.
    """
    status = outcome.status
    # No response (connection refused or reset, timeout) or the body broke off: transient.
    if status is None or outcome.exception is not None:
        endpoint_failed = outcome.no_answer is not None and outcome.no_answer.about_the_endpoint
        return Decision(Verdict.RETRY, _exception_reason(outcome), about_the_endpoint=endpoint_failed)
    body = outcome.body
    succeeded = 200 <= status < 300
    relayed_error = succeeded and _carries_error(body)
    not_the_answer = answer_problem(endpoint, body) if succeeded and isinstance(body, dict) and not relayed_error else None
    # 2xx with the endpoint's answer: the API answered.
    if succeeded and isinstance(body, dict) and not relayed_error and not_the_answer is None:
        success = _SUCCESSES.get(status)
        if success is None:
            success = _SUCCESSES[status] = Decision(Verdict.SUCCESS, f"HTTP {status}")
        return success

    # Everything below is a response we did not want; read what it says.
    code, type_, message = _error_fields(body)
    reason = _reason(outcome, code, type_, message, relayed=relayed_error, not_the_answer=not_the_answer)
    if relayed_error:  # a proxy relaying an error inside a 2xx: judged by the error, not the 2xx
        status = _status_of_relayed_error(body, code, type_)
    hint = retry_after_seconds(outcome.headers, message or outcome.text, now=now, body=body)
    server_says = _should_retry_header(outcome.headers)
    too_large = status == 429 and _is_request_too_large(code, type_, message)

    # Missing or invalid API key: every request will fail the same way.
    if status == 401:
        return Decision(Verdict.STOP_RUN, reason)
    # No quota, billing off, access terminated: every request will fail the same way.
    if 400 <= status < 500 and _is_stop_run_code(code, type_, message):
        return Decision(Verdict.STOP_RUN, reason)
    # A per-day quota used up (Gemini's): nothing passes before it resets, however short a wait the 429 asks for.
    daily_quota = quota_exhausted_for_the_day(body, now) if status == 429 else None
    if daily_quota is not None:
        return Decision(Verdict.STOP_RUN, _clip(f"HTTP {status}: {daily_quota}"))
    on_output_tokens = status == 429 and ERRORS.names_output_token_limit(message)
    on_tokens = status == 429 and not on_output_tokens and _names_the_token_limit(type_, message)
    named = {"on_tokens": on_tokens, "on_output_tokens": on_output_tokens}
    # No capacity for now (Flex): not our rate limit, whatever else the answer says; this request alone backs off.
    if status == 429 and ERRORS.no_capacity(code, type_):
        return Decision(Verdict.RETRY, reason, hint, no_capacity=True)
    # The server's own word beats the status rules below; a 429 it says to retry still pauses everyone.
    if server_says is True:
        return Decision(Verdict.RETRY, reason, hint, rate_limited=status == 429 and not too_large, **named)
    if server_says is False:
        return Decision(Verdict.FAIL, reason)
    # 2xx without the answer (cut off, a proxy's page, an unreadable or wrong-shaped body): transient.
    if 200 <= status < 300:
        return Decision(Verdict.RETRY, reason, hint)
    # One request larger than the whole tokens-per-minute limit can never pass.
    if too_large:
        return Decision(Verdict.FAIL, reason)
    # Rate limited: retry this one, and every sender pauses.
    if status == 429:
        return Decision(Verdict.RETRY, reason, hint, rate_limited=True, **named)
    # Request timeout, or conflict (a lock timed out): transient.
    if status in (408, 409):
        return Decision(Verdict.RETRY, reason, hint)
    # Server error or overloaded gateway: transient.
    if 500 <= status < 600:
        return Decision(Verdict.RETRY, reason, hint)
    # No such path (a 404 or 405 that is not about the line's model): every request would get the same.
    if status in (404, 405) and not _names_a_model(code, type_, message):
        return Decision(Verdict.FAIL, reason, about_the_endpoint=True)
    # Any other client error (400, 403, 404, 422, content filter, ...): the same request fails the same way.
    if 400 <= status < 500:
        return Decision(Verdict.FAIL, reason)
    # 1xx, 3xx or out of range: not an answer we can use.
    return Decision(Verdict.FAIL, reason)


def answer_problem(endpoint: Endpoint | None, body: Mapping[str, Any]) -> str | None:
    """Why a 2xx JSON object is not `endpoint`'s answer, or None when it is one.

    A success carries what its endpoint promises: a `choices` list (chat/completions, completions), a
    `data` list (embeddings), an `output` list or a `status` (responses). Without an endpoint any object
    will do (a transport of the caller's own may answer in its own shape).
    """
    if endpoint is None:
        return None
    fields = _ANSWER_FIELDS[endpoint]
    for name, kind in fields:  # a plain loop: this runs for every answer
        if isinstance(body.get(name), kind):
            return None
    wanted = " or ".join(f"{'list' if kind is list else 'string'} {name!r}" for name, kind in fields)
    return f"not a /{endpoint.value} answer (it has no {wanted})"


#: The one decision per 2xx status that succeeded (there are a handful): made once, as every answer gets one.
_SUCCESSES: dict[int, Decision] = {}
#: An "error" field holding one of these is no error.
_NO_ERROR: tuple[Any, ...] = (None, False, "", {}, [])


def _carries_error(body: Any) -> bool:
    """An error object in a 2xx body: {"error": {...}} as OpenAI writes errors, or vLLM's {"object": "error", ...}."""
    if not isinstance(body, dict):
        return False
    return body.get("error") not in _NO_ERROR or body.get("object") == "error"


def _status_of_relayed_error(body: dict[str, Any], code: str, type_: str) -> int:
    """The status an error relayed in a 2xx stands for: the one it states, else what its code or type
    says (400 for a run-stopping code, so that rule applies), else 500 (a server's error: retried)."""
    error = body.get("error")
    stated = [error.get("status"), error.get("code")] if isinstance(error, dict) else []
    for value in (*stated, body.get("status"), body.get("statusCode"), body.get("code")):
        status = _error_status(value)
        if status is not None:
            return status
    if _is_stop_run_code(code, type_):
        return 400
    relayed = ERRORS.relayed_status
    return relayed.get(code.lower()) or relayed.get(type_.lower()) or 500


def _error_status(value: Any) -> int | None:
    """An HTTP error status given as a number or a numeric string (Azure's "code": "429")."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if 400 <= number < 600 else None


def _error_fields(body: Any) -> tuple[str, str, str]:
    """(code, type, message) from an error body, each "" when absent.

    Tolerates OpenAI's {"error": {...}}, {"error": "text"}, a list of those, and servers that put the
    fields at the top level (Azure API Management's {"statusCode": 429, "message": ...}, vLLM).
    """
    if isinstance(body, list) and body:
        body = body[0]
    if not isinstance(body, dict):
        return "", "", ""
    error = body.get("error")
    if error is None:
        if not ("message" in body or "detail" in body or "code" in body):
            return "", "", ""  # an answer's own fields (Anthropic's "type": "message") are no error's
        error = body
    if isinstance(error, str):
        return "", "", error
    if not isinstance(error, dict):
        return "", "", ""
    message = error.get("message")
    if message is None:
        message = error.get("detail")
    return _as_text(error.get("code")), _as_text(error.get("type")), _as_text(message)


def _as_text(value: Any) -> str:
    return str(value) if isinstance(value, (str, int, float)) else ""


def _exception_reason(outcome: HTTPOutcome) -> str:
    """The exception text, after the status when one arrived before the failure."""
    text = _collapse(outcome.exception or "") or "no response"
    return _clip(text if outcome.status is None else f"HTTP {outcome.status}: {text}")


def _reason(outcome: HTTPOutcome, code: str, type_: str, message: str, *, relayed: bool = False, not_the_answer: str | None = None) -> str:
    """One line: 'HTTP 429 rate_limit_exceeded: Rate limit reached ...', at most MAX_REASON_CHARS."""
    head = f"HTTP {outcome.status}" + (" (an error body)" if relayed else "")
    # The code, else the type; a code that repeats the status (Azure's "429", vLLM's 400) says nothing new.
    label = next((text for text in (code, type_) if text and text != str(outcome.status)), "")
    if label:
        head = f"{head} {label}"
    snippet = _snippet(outcome.text)
    location = outcome.headers.get("location") if outcome.status is not None and 300 <= outcome.status < 400 else None
    if location:
        detail = f"redirected to {location}, not followed (a POST follows only 307 and 308, to http or https, a few in a row)"
    elif not_the_answer is not None:
        detail = f"{not_the_answer}: {snippet}" if snippet else not_the_answer
    elif message:
        detail = message
    elif isinstance(outcome.body, dict):  # a JSON error without a message: show what there is
        detail = snippet
    elif outcome.body is None and outcome.unreadable is not None:
        detail = f"unreadable JSON body ({outcome.unreadable}): {snippet}"
    elif outcome.body is None:
        detail = f"non-JSON body: {snippet}" if snippet else "empty body"
    else:
        detail = f"JSON body is not an object: {snippet}"
    detail = _collapse(detail)
    return _clip(f"{head}: {detail}" if detail else head)


def _snippet(text: str) -> str:
    """The start of a body, whitespace collapsed, for a reason."""
    # Collapse a generous prefix only: HTML pages can be long and mostly indentation.
    return _collapse(text[: 20 * MAX_BODY_SNIPPET_CHARS])[:MAX_BODY_SNIPPET_CHARS]


def _clip(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


def _collapse(text: str) -> str:
    return _WHITESPACE_RE.sub(" ", text).strip()


def _should_retry_header(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("x-should-retry", "").strip().lower()
    return True if value == "true" else False if value == "false" else None


def _is_stop_run_code(code: str, type_: str, message: str = "") -> bool:
    return ERRORS.stops_run(code, type_, message)


def _names_the_token_limit(type_: str, message: str) -> bool:
    """A 429 that says it is the token limit (not the request limit), in any provider's words."""
    return ERRORS.names_token_limit(type_, message)


def _names_a_model(code: str, type_: str, message: str) -> bool:
    """A 404 about the line's model ("model_not_found", "The model `x` does not exist"), not about the path."""
    return "model" in f"{code} {type_}".lower() or "model" in message.lower()


def _is_request_too_large(code: str, type_: str, message: str) -> bool:
    """A 429 for one request bigger than the whole token limit: in a provider's words, or "too large" with type "tokens"."""
    return ERRORS.too_large(message) or ("too large" in message.lower() and "tokens" in f"{code} {type_}".lower())
