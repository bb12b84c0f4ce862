"""The providers: one module each, and a registry that picks the one for a URL or an answer's headers."""

from __future__ import annotations

import pytest

from rate_limited_processor.config import Secret, Settings
from rate_limited_processor.providers import anthropic, azure, gemini, openai
from rate_limited_processor.providers.endpoints import Endpoint
from rate_limited_processor.providers.registry import (
    DEFAULT_PROVIDER,
    auth_headers_for,
    key_from_environment,
    key_variable_for,
    key_variable_holding,
    needs_a_key,
    parse_rate_limit_headers,
    provider_for,
    states_rate_limits,
)


@pytest.mark.parametrize(
    ("url", "provider"),
    [
        ("https://api.openai.com/v1/chat/completions", openai.PROVIDER),
        ("http://127.0.0.1:8000/v1/embeddings", openai.PROVIDER),  # OpenAI-compatible: the default
        ("https://x.openai.azure.com/openai/deployments/d/chat/completions?api-version=2024-10-21", azure.PROVIDER),
        ("https://gw.example.com/openai/deployments/d/embeddings", azure.PROVIDER),  # a gateway in front of Azure
        ("https://api.anthropic.com/v1/messages", anthropic.PROVIDER),
        ("https://api.anthropic.com/v1", anthropic.PROVIDER),  # a Batch root on its host
        ("http://127.0.0.1:8000/v1/messages", anthropic.PROVIDER),  # the mock's Messages API
    ],
)
def test_the_provider_of_a_url(url: str, provider: object) -> None:
    assert provider_for(url) is provider


def test_each_provider_puts_the_key_where_its_api_looks() -> None:
    assert auth_headers_for("https://api.openai.com/v1/embeddings", "k-1") == {"Authorization": "Bearer k-1"}
    assert auth_headers_for("https://x.openai.azure.com/openai/deployments/d/embeddings", "k-1") == {"api-key": "k-1"}
    assert auth_headers_for("https://api.anthropic.com/v1/messages", "k-1") == {"x-api-key": "k-1", "anthropic-version": anthropic.VERSION}
    assert auth_headers_for("https://api.anthropic.com/v1/messages", None) == {"anthropic-version": anthropic.VERSION}
    assert auth_headers_for("http://127.0.0.1:8000/v1/embeddings", None) == {}
    assert key_variable_for("https://api.anthropic.com/v1/messages") == "ANTHROPIC_API_KEY"
    assert key_variable_for("https://api.openai.com/v1/embeddings") == "OPENAI_API_KEY" == DEFAULT_PROVIDER.key_variable


def test_azure_reads_its_key_from_azure_openai_api_key_then_openai_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    azure = "https://x.openai.azure.com/openai/deployments/d/embeddings"
    assert key_variable_for(azure) == "AZURE_OPENAI_API_KEY"  # what the "no key" message names
    assert key_from_environment(azure, {"AZURE_OPENAI_API_KEY": "a", "OPENAI_API_KEY": "o"}) == "a"
    assert key_from_environment(azure, {"OPENAI_API_KEY": "o"}) == "o"  # as earlier releases read it
    assert key_from_environment("https://api.openai.com/v1/embeddings", {"AZURE_OPENAI_API_KEY": "a"}) is None
    # Where a message or a printed command names the key's variable, it names the one that holds it.
    assert key_variable_holding(azure, {"OPENAI_API_KEY": "o"}) == "OPENAI_API_KEY"
    assert key_variable_holding(azure, {"AZURE_OPENAI_API_KEY": "a", "OPENAI_API_KEY": "o"}) == "AZURE_OPENAI_API_KEY"
    assert key_variable_holding(azure, {}) == "AZURE_OPENAI_API_KEY"
    assert provider_for(azure).curl_auth("OPENAI_API_KEY") == '-H "api-key: $OPENAI_API_KEY"'
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "from-azure")
    key = Settings(request_url=azure).api_key
    assert isinstance(key, Secret) and key.reveal() == "from-azure"


def test_only_a_providers_own_host_needs_a_key() -> None:
    assert needs_a_key("https://api.openai.com/v1/embeddings") and needs_a_key("https://API.anthropic.com/v1/messages")
    assert needs_a_key("https://x.cognitiveservices.azure.com/openai/deployments/d/embeddings")
    assert not needs_a_key("http://127.0.0.1:8000/v1/messages") and not needs_a_key("https://gw.example.com/openai/deployments/d/x")


def test_the_headers_say_whose_they_are_whatever_the_url() -> None:
    anthropic_headers = {"anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "0"}
    report = parse_rate_limit_headers(anthropic_headers, now=0.0)
    assert (report.limit_requests, report.remaining_requests, report.exhausted) == (50.0, 0.0, True)
    assert parse_rate_limit_headers({"x-ratelimit-remaining-tokens": "7"}).remaining_tokens == 7.0
    assert states_rate_limits(anthropic_headers) and not states_rate_limits({"x-request-id": "1"})


def test_only_the_messages_and_gemini_apis_are_refused_by_the_files_and_batches_api_and_anthropic_speaks_its_own() -> None:
    assert [endpoint for endpoint in Endpoint if endpoint.batch_api_refusal is not None] == [Endpoint.MESSAGES, Endpoint.GENERATE_CONTENT]
    assert openai.PROVIDER.speaks_batch_api and azure.PROVIDER.speaks_batch_api and not gemini.PROVIDER.speaks_batch_api
    assert anthropic.PROVIDER.speaks_batch_api and anthropic.PROVIDER.message_batches and not openai.PROVIDER.message_batches
    assert openai.PROVIDER.curl_auth() == '-H "Authorization: Bearer $OPENAI_API_KEY"'


def test_names_of_earlier_releases_still_import() -> None:
    from rate_limited_processor.config import ANTHROPIC_API_KEY_VARIABLE
    from rate_limited_processor.config.credentials import ANTHROPIC_VERSION

    assert (ANTHROPIC_API_KEY_VARIABLE, ANTHROPIC_VERSION) == (anthropic.API_KEY_VARIABLE, anthropic.VERSION)
    with pytest.raises(ImportError):
        from rate_limited_processor.config import NO_SUCH_NAME  # noqa: F401


def test_every_endpoint_has_a_probe_body_from_the_provider_that_serves_it() -> None:
    from rate_limited_processor.providers.registry import PROBE_BODIES

    assert set(PROBE_BODIES) == set(Endpoint)
    assert PROBE_BODIES[Endpoint.MESSAGES] is anthropic.PROVIDER.probe_bodies["messages"]


def test_an_error_is_read_in_every_providers_words() -> None:
    from rate_limited_processor.providers.registry import ERRORS

    assert ERRORS.relayed_status["overloaded_error"] == 529 and ERRORS.relayed_status["rate_limit_exceeded"] == 429
    assert ERRORS.stops_run("", "", "Your credit balance is too low") and ERRORS.stops_run("insufficient_quota", "")
    assert not ERRORS.stops_run("", "", "")
    for words in ("Requests to the deployment have exceeded token rate limit", "Rate limit on tokens per min (TPM)", "50,000 input tokens per minute"):
        assert ERRORS.names_token_limit("", words), words
    pattern = ERRORS.wait_pattern()
    assert pattern.search("Please retry after 6 seconds") and pattern.search("Please try again in 1.5s")
