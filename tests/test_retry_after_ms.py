"""`retry-after-ms` wherever a provider sends it: every provider's online answers (OpenAI, Azure, Anthropic,
Gemini), and the Batch API client's calls, which wait what `retry-after-ms` or `retry-after` asks, up to a cap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import pytest

from rate_limited_processor import RetryPolicy, Settings, TransportRequest, TransportResponse, run_file_job
from rate_limited_processor.config.credentials import Scrubber
from rate_limited_processor.core.classification import HTTPOutcome, classify
from rate_limited_processor.jobs.batch_api import FIRST_CALL_DELAY, MAX_HINTED_CALL_DELAY, BatchAPI, BatchAPIError, HTTPCall
from rate_limited_processor.providers.endpoints import endpoint_from_url
from tests.helpers import read_rows, write_jsonl
from tests.virtual_time import run_virtual, virtual_time

#: (a request URL of the provider, a line for it, its rate-limit 429's body, its success's body); each 429 also states
#: a wait of its own (in words, Gemini's RetryInfo, Anthropic's `retry-after`) that `retry-after-ms` must beat.
PROVIDERS: dict[str, tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = {
    "OpenAI": (
        "https://api.openai.com/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        {"error": {"message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1. "
                   "Please try again in 20s.", "type": "requests", "param": None, "code": "rate_limit_exceeded"}},
        {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]},
    ),
    "Azure": (
        "https://res.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        {"error": {"code": "429", "message": "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
                   "2024-10-21 have exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 20 seconds."}},
        {"object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]},
    ),
    "Anthropic": (
        "https://api.anthropic.com/v1/messages",
        {"model": "claude-3-5-haiku-latest", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
        {"type": "error", "error": {"type": "rate_limit_error", "message": "This request would exceed the rate limit for your "
                                    "organization of 50 requests per minute."}},
        {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "ok"}], "usage": {"input_tokens": 3, "output_tokens": 1}},
    ),
    "Gemini": (
        "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
        {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        {"error": {"code": 429, "message": "Resource has been exhausted.", "status": "RESOURCE_EXHAUSTED", "details": [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "20s"}]}},
        {"candidates": [{"content": {"parts": [{"text": "ok"}], "role": "model"}, "finishReason": "STOP"}]},
    ),
}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_every_providers_429_waits_what_retry_after_ms_says_before_any_other_hint(provider: str) -> None:
    url, _, refusal, _ = PROVIDERS[provider]
    endpoint = endpoint_from_url(url)
    own = {"retry-after": "20"} if provider == "Anthropic" else {}  # Anthropic says its wait in whole seconds, in a header
    without = classify(HTTPOutcome(429, own, refusal, json.dumps(refusal)), endpoint=endpoint)
    assert without.rate_limited and without.retry_after == 20.0  # its own hint, when no retry-after-ms says
    for headers in ({"retry-after-ms": "2500"}, {"retry-after-ms": "2500", "retry-after": "3"}):
        decision = classify(HTTPOutcome(429, {**own, **headers}, refusal, json.dumps(refusal)), endpoint=endpoint)
        assert decision.rate_limited and decision.retry_after == 2.5


def test_a_server_error_or_anthropics_529_with_retry_after_ms_waits_that_long() -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    assert classify(HTTPOutcome(529, {"retry-after-ms": "1500"}, overloaded, "")).retry_after == 1.5
    assert classify(HTTPOutcome(503, {"retry-after-ms": "750"}, None, "busy")).retry_after == 0.75


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_a_run_through_each_provider_resends_a_refused_line_after_retry_after_ms(tmp_path: Path, provider: str) -> None:
    url, line, refusal, success = PROVIDERS[provider]
    sent_at: list[float] = []

    def server(request: TransportRequest) -> TransportResponse:
        sent_at.append(virtual_time())
        if len(sent_at) == 1:
            return TransportResponse(429, {"retry-after-ms": "2500", "content-type": "application/json"}, json.dumps(refusal).encode())
        return TransportResponse(200, {"content-type": "application/json"}, json.dumps(success).encode())

    input_path = write_jsonl(tmp_path / "requests.jsonl", [line])
    settings = Settings(request_url=url, api_key="k", retry=RetryPolicy(max_attempts=2))
    stats = run_virtual(run_file_job(settings, input_path, tmp_path / "out.jsonl", show_progress=False, transport=server))
    assert stats.succeeded == 1 and len(read_rows(tmp_path / "out.jsonl")) == 1
    assert len(sent_at) == 2 and sent_at[1] - sent_at[0] == pytest.approx(2.5, abs=0.01)


class _Refusing:
    """A Files and Batches API that refuses the first call with `status` and `headers`, then answers."""

    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers
        self.called_at: list[float] = []

    async def call(self, call: HTTPCall, sink: IO[bytes] | None = None) -> TransportResponse:
        self.called_at.append(virtual_time())
        if len(self.called_at) == 1:
            return TransportResponse(self.status, self.headers, b'{"error": {"message": "slow down", "type": "requests"}}')
        return TransportResponse(200, {}, b'{"id": "batch_1", "status": "in_progress"}')


@pytest.mark.parametrize(
    ("status", "headers", "waited"),
    [
        (429, {}, FIRST_CALL_DELAY),
        (429, {"retry-after-ms": "2500"}, 2.5),
        (429, {"retry-after-ms": "2500", "retry-after": "9"}, 2.5),
        (429, {"Retry-After": "7"}, 7.0),
        (503, {"retry-after": "4"}, 4.0),
        (429, {"retry-after": "86400"}, MAX_HINTED_CALL_DELAY),  # a day: waited out up to the cap, then asked again
    ],
    ids=["no hint: backoff", "retry-after-ms", "ms before seconds", "retry-after", "503 retry-after", "capped"],
)
def test_the_batch_api_client_waits_what_the_server_asks_up_to_a_cap(status: int, headers: dict[str, str], waited: float) -> None:
    http = _Refusing(status, headers)

    async def main() -> dict[str, Any]:
        return await BatchAPI("https://api.openai.com/v1", {}, http=http, scrub=Scrubber([])).get("batch_1")

    assert run_virtual(main())["id"] == "batch_1"
    assert http.called_at[1] - http.called_at[0] == pytest.approx(waited)


def test_the_batch_api_client_still_refuses_a_400_at_once_whatever_its_headers() -> None:
    http = _Refusing(400, {"retry-after-ms": "10"})

    async def main() -> None:
        await BatchAPI("https://api.openai.com/v1", {}, http=http, scrub=Scrubber([])).get("batch_1")

    with pytest.raises(BatchAPIError):
        run_virtual(main())
    assert len(http.called_at) == 1
