"""Gemini's native API (issue 27): the provider module, its strict double, and the judges in virtual time.

The double (`mock_server/gemini.py`) enforces RPM over one-second buckets, sends no rate-limit headers, and
answers an over-limit request 429 RESOURCE_EXHAUSTED with its wait in a RetryInfo detail: the closed loop has
only that, and the 429s themselves, to learn the rate by.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from rate_limited_processor import Limits, RetryPolicy, Settings, run_file_job
from rate_limited_processor.config import Secret
from rate_limited_processor.core.classification import HTTPOutcome, Verdict, classify
from rate_limited_processor.core.costs import usage_tokens
from rate_limited_processor.core.stats import RunStats
from rate_limited_processor.mock_server import MockApi, MockConfig
from rate_limited_processor.mock_server.api import MockRequest
from rate_limited_processor.mock_server.transport import MockTransport
from rate_limited_processor.providers import gemini, registry
from rate_limited_processor.providers.endpoints import Endpoint, check_request, endpoint_from_url
from rate_limited_processor.providers.registry import auth_headers_for, key_from_environment, needs_a_key, provider_for, states_rate_limits
from rate_limited_processor.providers.token_estimation import TokenEstimator
from tests.helpers import read_rows, write_jsonl
from tests.virtual_time import run_virtual, virtual_time

URL = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
MOCK_URL = "http://mock.invalid/v1beta/models/gemini-2.0-flash:generateContent"
RPM = 600


def gemini_request(i: int) -> dict[str, Any]:
    return {
        "contents": [{"role": "user", "parts": [{"text": f"Question number {i}: what is {i} + {i}?"}]}],
        "generationConfig": {"maxOutputTokens": 8},
        "metadata": {"id": i},
    }


# --------------------------------------------------------------------------------------- the provider


def test_a_generate_content_url_on_any_host_is_geminis_and_names_the_endpoint_and_the_model() -> None:
    for url in (URL, MOCK_URL, "https://gateway.example/gemini/v1/models/gemini-2.5-pro:generateContent"):
        assert provider_for(url) is gemini.PROVIDER
        assert endpoint_from_url(url) is Endpoint.GENERATE_CONTENT
    assert gemini.model_of_url(URL) == "gemini-2.0-flash"
    assert needs_a_key(URL) and not needs_a_key(MOCK_URL)
    assert provider_for("https://api.openai.com/v1/chat/completions") is not gemini.PROVIDER
    # Its OpenAI-compatible API on the same host speaks OpenAI's bodies and Bearer keys.
    compatible = "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
    assert provider_for(compatible) is not gemini.PROVIDER and auth_headers_for(compatible, "k") == {"Authorization": "Bearer k"}


def test_the_key_goes_in_x_goog_api_key_read_from_gemini_api_key_then_google_api_key() -> None:
    assert auth_headers_for(URL, "k") == {"x-goog-api-key": "k"}
    assert key_from_environment(URL, {"GEMINI_API_KEY": "g", "GOOGLE_API_KEY": "o"}) == "g"
    assert key_from_environment(URL, {"GOOGLE_API_KEY": "o"}) == "o"
    assert key_from_environment(URL, {"GEMINI_API_KEY": "", "OPENAI_API_KEY": "x"}) is None


def test_settings_read_the_key_from_google_api_key_when_gemini_api_key_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_API_KEY", "from-google")
    key = Settings(request_url=URL).api_key
    assert isinstance(key, Secret) and key.reveal() == "from-google"


def test_a_body_without_contents_is_refused_before_it_is_sent() -> None:
    from rate_limited_processor.base.errors import InvalidRequest
    from rate_limited_processor.base.models import APIRequest

    estimator = TokenEstimator(warn=lambda _: None)
    with pytest.raises(InvalidRequest, match="contents"):
        check_request(APIRequest(index=0, body={"messages": [{"role": "user", "content": "hi"}]}), URL, estimator.estimate_parts)
    url, endpoint, prompt, budget = check_request(APIRequest(index=0, body=gemini_request(1)), URL, estimator.estimate_parts)
    assert (url, endpoint, budget) == (URL, Endpoint.GENERATE_CONTENT, 8) and prompt > 0


def test_tokens_are_estimated_from_the_text_saying_once_that_geminis_tokenizer_is_not_tiktoken() -> None:
    said: list[str] = []
    estimator = TokenEstimator(warn=said.append)
    text = "x" * 400
    body = {"systemInstruction": {"parts": [{"text": "Be brief."}]}, "contents": [{"role": "user", "parts": [{"text": text}]}]}
    first = estimator.prompt_tokens(Endpoint.GENERATE_CONTENT, body)
    estimator.prompt_tokens(Endpoint.GENERATE_CONTENT, body)
    assert 100 <= first <= 120  # 400 characters at 4 each, framing and the instruction on top
    assert said == [gemini.TOKENIZER_NOTE] and "not tiktoken" in said[0]
    # Inline media count a flat image's tokens, not their base64 text.
    image = {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "A" * 100_000}}]}]}
    assert estimator.prompt_tokens(Endpoint.GENERATE_CONTENT, image) < 2_000
    # Gemini's TPM counts input tokens: the output budget is not charged against it.
    assert estimator.estimate(Endpoint.GENERATE_CONTENT, gemini_request(1)) == estimator.prompt_tokens(Endpoint.GENERATE_CONTENT, gemini_request(1))


def test_usage_is_read_from_usage_metadata() -> None:
    answer = {"candidates": [], "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 30, "thoughtsTokenCount": 5}}
    assert usage_tokens(answer) == (12, 35)
    assert usage_tokens({"candidates": []}) is None


def _resource_exhausted(delay: str) -> dict[str, Any]:
    return {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "You exceeded your current quota.", "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay},
    ]}}


def test_a_429_resource_exhausted_is_a_rate_limit_whose_wait_is_its_retry_info_delay() -> None:
    body = _resource_exhausted("45.8s")
    decision = classify(HTTPOutcome(429, {}, body, json.dumps(body)), endpoint=Endpoint.GENERATE_CONTENT)
    assert (decision.verdict, decision.rate_limited, decision.retry_after) == (Verdict.RETRY, True, 45.8)
    assert gemini.wait_in_body(_resource_exhausted("1m30s")) == 90.0
    assert gemini.wait_in_body(_resource_exhausted("soon")) is None and gemini.wait_in_body({"error": "x"}) is None
    # A header still beats the body: it is the more direct word.
    assert classify(HTTPOutcome(429, {"retry-after": "2"}, body), endpoint=Endpoint.GENERATE_CONTENT).retry_after == 2.0


def test_a_bad_key_stops_the_run_though_gemini_answers_it_400() -> None:
    body = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "API key not valid. Please pass a valid API key."}}
    assert classify(HTTPOutcome(400, {}, body), endpoint=Endpoint.GENERATE_CONTENT).verdict is Verdict.STOP_RUN


# --------------------------------------------------------------------------------------- the double


def _ask(api: MockApi, body: Any, headers: dict[str, str] | None = None) -> Any:
    async def main() -> Any:
        return await api.answer(MockRequest("/v1beta/models/gemini-2.0-flash:generateContent", json.dumps(body).encode(), headers or {}))

    return run_virtual(main())


def test_the_double_answers_geminis_shapes_with_no_rate_limit_headers() -> None:
    api = MockApi(MockConfig(requests_per_minute=60, api_key="secret"))
    assert _ask(api, gemini_request(1), {"authorization": "Bearer secret"}).status == 400  # not where Gemini reads it
    ok = _ask(api, gemini_request(1), {"x-goog-api-key": "secret"})
    assert ok.status == 200 and isinstance(ok.json()["candidates"], list) and ok.json()["usageMetadata"]["candidatesTokenCount"] > 0
    # Its output stops at the request's maxOutputTokens (8), as Gemini's does, though the mock would say 40.
    assert ok.json()["usageMetadata"]["candidatesTokenCount"] == 8 and ok.json()["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert not states_rate_limits(ok.headers)
    refused = _ask(api, gemini_request(2), {"x-goog-api-key": "secret"})  # the one-second bucket holds one request
    assert refused.status == 429 and not states_rate_limits(refused.headers) and "retry-after" not in refused.headers
    error = refused.json()["error"]
    wait = gemini.wait_in_body(refused.json())
    assert error["status"] == "RESOURCE_EXHAUSTED" and wait is not None and 0 < wait <= 1.0
    assert _ask(api, {"messages": []}, {"x-goog-api-key": "secret"}).status == 400


# --------------------------------------------------------------------------------------- the judges


def run(tmp_path: Path, limits: Limits, n: int, *, hint: float | None = None) -> tuple[float, RunStats, MockApi]:
    api = MockApi(MockConfig(requests_per_minute=RPM, latency=0.5, latency_jitter=1.0, rate_limit_hint=hint))
    input_path = write_jsonl(tmp_path / "requests.jsonl", [gemini_request(i) for i in range(n)])
    settings = Settings(request_url=MOCK_URL, api_key=None, limits=limits, retry=RetryPolicy(max_attempts=5))

    async def main() -> tuple[float, RunStats]:
        started = virtual_time()
        stats = await run_file_job(settings, input_path, tmp_path / "results.jsonl", show_progress=False, transport=MockTransport(api))
        return virtual_time() - started, stats

    elapsed, stats = run_virtual(main())
    rows = read_rows(tmp_path / "results.jsonl")
    assert sorted(row[2]["id"] for row in rows) == list(range(n)), "every line exactly once"
    assert all("candidates" in row[1] for row in rows), "no failure rows"
    return elapsed, stats, api


def _sent_before_the_delay(api: MockApi) -> list[tuple[float, float, float]]:
    """Each time a line came back before the delay its 429 asked for had passed: (429 at, delay, came back at)."""
    early = []
    refused: dict[str, tuple[float, float]] = {}
    for entry in sorted(api.record, key=lambda entry: entry.arrived_at):
        if entry.key in refused:
            at, delay = refused.pop(entry.key)
            if entry.arrived_at < at + delay:
                early.append((at, delay, entry.arrived_at))
        if entry.outcome == 429:
            refused[entry.key] = (entry.arrived_at, entry.retry_after or 0.0)
    return early


@pytest.mark.parametrize(
    ("limits", "most_time", "most_429s"), [(Limits(RPM, math.inf), 1.08, 0.01), (Limits(None, None), 1.20, 0.05)], ids=["told 600 RPM", "not told"]
)
def test_gemini_at_600_rpm_goes_at_the_limit_and_obeys_every_retry_delay(tmp_path: Path, limits: Limits, most_time: float, most_429s: float) -> None:
    n = 1_200
    elapsed, _, api = run(tmp_path, limits, n)
    ideal = n / (RPM / 60)  # 120 s
    refusals = api.record.count(429)
    print(f"{elapsed:.1f}s against {ideal:.0f}s ({elapsed / ideal:.3f}x), {refusals} 429s")
    assert elapsed <= most_time * ideal, f"{elapsed:.1f}s against an ideal of {ideal:.0f}s"
    assert refusals <= most_429s * n
    assert _sent_before_the_delay(api) == []


@pytest.mark.parametrize("read", [True, False], ids=["RetryInfo read", "RetryInfo ignored (the judge fails)"])
def test_a_retry_delay_of_5_s_is_obeyed_by_every_line_and_every_sender(tmp_path: Path, read: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # Real per-minute quotas ask for tens of seconds; the gate's own waits (tens of ms) are too short to tell.
    if not read:
        monkeypatch.setattr(registry, "_BODY_WAITS", ())
    n = 600
    _, _, api = run(tmp_path, Limits(None, None), n, hint=5.0)
    arrivals = sorted(entry.arrived_at for entry in api.record)
    refusals = [entry for entry in api.record if entry.outcome == 429]
    sent_meanwhile = sum(1 for refusal in refusals for at in arrivals if refusal.arrived_at < at < refusal.arrived_at + 5.0)
    assert refusals
    if read:
        assert (_sent_before_the_delay(api), sent_meanwhile) == ([], 0)
    else:
        assert _sent_before_the_delay(api) != []


def test_the_judge_of_retry_delays_sees_a_line_sent_too_soon() -> None:
    """The judge above can fail: a line back 0.05 s after a 429 that asked for 0.1 s is caught."""
    from rate_limited_processor.mock_server.record import Served

    api = MockApi(MockConfig())
    api.record.append(Served(1.0, Endpoint.GENERATE_CONTENT, 429, "a", retry_after=0.1))
    api.record.append(Served(1.05, Endpoint.GENERATE_CONTENT, 200, "a"))
    assert _sent_before_the_delay(api) == [(1.0, 0.1, 1.05)]


@pytest.mark.parametrize("header", ["x-goog-api-key", "X-Goog-Api-Key", "Authorization", "api-key", "x-api-key"])
def test_a_key_given_with_header_counts_as_a_key_for_every_providers_own_header(header: str) -> None:
    from rate_limited_processor.base.errors import UsageError
    from rate_limited_processor.jobs.preflight import check_key_for_provider

    url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent"
    check_key_for_provider(url, has_key=False, headers={header: "its key"})  # refused before: x-goog-api-key was not known
    with pytest.raises(UsageError, match="GEMINI_API_KEY"):
        check_key_for_provider(url, has_key=False, headers={"anthropic-version": "2023-06-01"})


# --------------------------------------------------------------------------------------- prices


def test_a_body_without_a_model_is_priced_as_the_model_in_the_url_at_googles_prices_on_any_host() -> None:
    from rate_limited_processor.core.costs import PriceBook

    for url in (URL, MOCK_URL, "http://127.0.0.1:8000/v1beta/models/gemini-2.0-flash:generateContent"):
        prices = PriceBook(request_url=url)
        price = prices.price(None)
        assert prices.url_model == "gemini-2.0-flash" and price is not None and "google" in price.source, url
        assert 0 < price.input_per_mtok < price.output_per_mtok
    # An OpenAI URL names no model: a body without one still has no price (none is made up).
    assert PriceBook(request_url="https://api.openai.com/v1/chat/completions").price(None) is None


def test_a_gemini_runs_summary_shows_dollars_for_the_model_in_the_url(tmp_path: Path) -> None:
    from rate_limited_processor.core.costs import PriceBook
    from rate_limited_processor.ui.summary import format_summary

    _, stats, _ = run(tmp_path, Limits(RPM, math.inf), 20)
    prices = PriceBook(request_url=MOCK_URL)
    spent = stats.spent.priced(prices)
    assert [(cost.model, cost.requests) for cost in spent.by_model] == [("gemini-2.0-flash", 20)]
    assert spent.total > 0 and not spent.unpriced and stats.estimated_cost.priced(prices).total > 0
    summary = format_summary(stats, prices=prices)
    assert "gemini-2.0-flash" in summary and "no price known" not in summary and "(no model)" not in summary
    # The judge can fail: priced as the mock's host alone (OpenAI's), the model has no price.
    assert stats.spent.priced(PriceBook(request_url="http://mock.invalid/v1/chat/completions")).unpriced == ("(no model)",)
