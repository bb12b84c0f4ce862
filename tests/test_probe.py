"""--show_limits: one small request, and what its answer's rate-limit headers say, in plain words."""

from __future__ import annotations

from rate_limited_processor import Settings
from rate_limited_processor.jobs.probe import LimitsSeen, format_limits, probe_body, probe_limits
from rate_limited_processor.mock_server import MockApi, MockConfig, MockTransport
from rate_limited_processor.providers.endpoints import Endpoint
from tests.helpers import mock_url
from tests.virtual_time import run_virtual


def test_the_probe_is_the_cheapest_request_of_each_endpoint_and_names_the_files_model() -> None:
    chat = probe_body(Endpoint.CHAT_COMPLETIONS)
    assert chat["max_tokens"] == 1 and len(chat["messages"]) == 1
    assert probe_body(Endpoint.EMBEDDINGS, "text-embedding-3-large") == {"model": "text-embedding-3-large", "input": "Hi"}
    assert probe_body(Endpoint.COMPLETIONS)["max_tokens"] == 1


def test_the_probe_reads_the_mocks_limits_with_one_request_of_one_completion_token() -> None:
    api = MockApi(MockConfig(requests_per_minute=600, tokens_per_minute=100_000))
    settings = Settings(request_url=mock_url(), api_key=None)
    seen = run_virtual(probe_limits(settings, probe_body(Endpoint.CHAT_COMPLETIONS), MockTransport(api)))
    assert (seen.outcome, seen.answered, seen.succeeded) == ("HTTP 200", True, True)
    assert (seen.limit_requests, seen.limit_tokens) == (600, 100_000)
    assert seen.remaining_requests is not None and seen.remaining_requests < 600
    assert len(api.record.entries) == 1 and api.record.entries[0].tokens < 20  # a few prompt tokens and one completion token


def test_format_limits_in_plain_words() -> None:
    seen = LimitsSeen("HTTP 200", True, True, 500, 499, 0.12, 200_000, 199_990, 0.0)
    assert format_limits(seen, url="https://api.openai.com/v1/chat/completions", model="gpt-4o-mini") == (
        "rate limits for gpt-4o-mini at https://api.openai.com/v1/chat/completions, from the headers of one small request (HTTP 200):\n"
        "  requests  500 per minute; 499 left now; full again in 120ms\n"
        "  tokens    200,000 per minute; 199,990 left now; full now"
    )
    azure = LimitsSeen("HTTP 200", True, True, remaining_requests=99, remaining_tokens=9_000, reset_tokens=6.0)  # Azure: what remains
    text = format_limits(azure, url="https://r.openai.azure.com/openai/deployments/d/chat/completions", model=None, default_model=True)
    assert "requests  limit not stated; 99 left now" in text and "tokens    limit not stated; 9,000 left now; full again in 6.0s" in text


def test_format_limits_when_the_answer_says_nothing_about_them() -> None:
    bare = format_limits(LimitsSeen("HTTP 200", True, True), url="http://127.0.0.1:8000/v1/embeddings", model="m")
    assert "the API sent no rate-limit headers" in bare
    refused = format_limits(LimitsSeen("HTTP 401 invalid_api_key: Incorrect API key", True, False), url="http://h/v1/embeddings", model="m")
    assert refused == "the request to http://h/v1/embeddings failed, and its answer states no rate limits: HTTP 401 invalid_api_key: Incorrect API key"
    silent = format_limits(LimitsSeen("ClientConnectorError: refused", False, False), url="http://h/v1/embeddings", model="m")
    assert silent == "no answer from http://h/v1/embeddings: ClientConnectorError: refused"
