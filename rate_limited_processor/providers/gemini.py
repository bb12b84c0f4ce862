"""Google's Gemini API, native (`https://generativelanguage.googleapis.com/v1beta/models/MODEL:generateContent`).

The path names the model and the method (`...:generateContent`), on any host (a gateway may front it). The key
goes in `x-goog-api-key`, read from $GEMINI_API_KEY, else $GOOGLE_API_KEY. Bodies are Gemini's: `contents` (a
list of `{role, parts: [{text}]}`), `systemInstruction`, `tools`, and `generationConfig` (`maxOutputTokens`,
`candidateCount`); answers carry `candidates` and count tokens in `usageMetadata` (`promptTokenCount`,
`candidatesTokenCount`). Limits are per project and model (RPM, input TPM, requests per day), and no answer
states them: Gemini sends no rate-limit headers, so the closed loop learns the rate. A 429 `RESOURCE_EXHAUSTED`
says how long to wait in its body, in a `google.rpc.RetryInfo` detail (`"retryDelay": "45.8s"`), read here by
`wait_in_body`. Its tokenizer is not tiktoken: tokens are estimated at one per `CHARACTERS_PER_TOKEN` characters.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..base.durations import parse_duration
from .provider import ErrorDialect, Provider
from .rate_limits import RateLimitReport

__all__ = [
    "PROVIDER", "HOST", "API_KEY_VARIABLES", "METHOD", "CHARACTERS_PER_TOKEN", "TOKENIZER_NOTE", "RETRY_INFO_TYPE",
    "serves", "auth_headers", "model_of_url", "wait_in_body", "approximate_tokens", "output_budget", "usage_counts",
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
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and detail.get("@type") == RETRY_INFO_TYPE:
            delay = detail.get("retryDelay")
            if isinstance(delay, str):
                seconds = parse_duration(delay.strip())
                if seconds is not None and seconds >= 0:
                    return seconds
    return None


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
)
