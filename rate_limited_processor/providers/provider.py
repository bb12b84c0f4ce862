"""What a provider module declares: a `Provider` (its URLs, key, auth headers, rate-limit headers, limits) and
its `ErrorDialect` (what its error bodies say). The modules `openai`, `azure`, `anthropic` and `gemini` each make one;
`registry` picks the one for a URL. A new provider is a new module of that shape, and a line in `registry`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..base.durations import NUMBER, UNIT
from .rate_limits import RateLimitReport

__all__ = ["Provider", "ErrorDialect", "RateLimitParser", "BatchPlace", "host_of"]

#: Reads one answer's rate-limit headers, at `now` (epoch seconds; None: the wall clock, for RFC 3339 resets).
RateLimitParser = Callable[[Mapping[str, str], "float | None"], RateLimitReport]


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


@dataclass(frozen=True, slots=True)
class ErrorDialect:
    """What a provider's error bodies say, in the words classification looks for (all compared lower-case)."""

    #: Error codes or types a 2xx's error body may carry in place of a status, and the status they stand for.
    relayed_status: Mapping[str, int] = field(default_factory=dict)
    #: Codes or types after which every request will fail the same way: no quota, no billing, no access.
    stop_run_codes: frozenset[str] = frozenset()
    #: ...or words of the message that say so.
    stop_run_words: tuple[str, ...] = ()
    #: A 429's type that names the token limit, or words of its message that do...
    token_limit_types: tuple[str, ...] = ()
    token_limit_words: tuple[str, ...] = ()
    #: ...or the output-token limit.
    output_token_words: tuple[str, ...] = ()
    #: Words of a 429's message for one request larger than the whole token limit (it can never pass).
    too_large_words: tuple[str, ...] = ()
    #: Words that lead a wait in the message: "try again in" 1.5s, "retry after" 6 seconds.
    wait_words: tuple[str, ...] = ()
    #: Codes of a 429 that says the provider has no capacity now (OpenAI Flex's "resource_unavailable"): not the
    #: account's rate limit, so it is retried with backoff and moves no rate.
    no_capacity_codes: frozenset[str] = frozenset()

    @classmethod
    def merged(cls, *dialects: ErrorDialect) -> ErrorDialect:
        """Every dialect's words at once: an error is read alike whoever sent it (a gateway may relay any)."""

        def union(name: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(word for dialect in dialects for word in getattr(dialect, name)))

        return cls(
            relayed_status={code: status for dialect in dialects for code, status in dialect.relayed_status.items()},
            stop_run_codes=frozenset().union(*(dialect.stop_run_codes for dialect in dialects)),
            stop_run_words=union("stop_run_words"),
            token_limit_types=union("token_limit_types"),
            token_limit_words=union("token_limit_words"),
            output_token_words=union("output_token_words"),
            too_large_words=union("too_large_words"),
            wait_words=union("wait_words"),
            no_capacity_codes=frozenset().union(*(dialect.no_capacity_codes for dialect in dialects)),
        )

    def stops_run(self, code: str, type_: str, message: str = "") -> bool:
        text = message.lower()
        return code.lower() in self.stop_run_codes or type_.lower() in self.stop_run_codes or any(word in text for word in self.stop_run_words)

    def no_capacity(self, code: str, type_: str) -> bool:
        """A 429 about the provider's capacity, not the account's rate limit."""
        return code.lower() in self.no_capacity_codes or type_.lower() in self.no_capacity_codes

    def names_token_limit(self, type_: str, message: str) -> bool:
        text = message.lower()
        return type_.lower() in self.token_limit_types or any(word in text for word in self.token_limit_words)

    def names_output_token_limit(self, message: str) -> bool:
        text = message.lower()
        return any(word in text for word in self.output_token_words)

    def too_large(self, message: str) -> bool:
        text = message.lower()
        return any(word in text for word in self.too_large_words)

    def wait_pattern(self) -> re.Pattern[str]:
        """A wait stated in a message: a Go duration, or a number of seconds, after one of `wait_words`."""
        lead = "|".join(re.escape(word) for word in self.wait_words) or "(?!)"
        return re.compile(
            rf"(?:{lead})\s+(?:(?P<duration>(?:{NUMBER}{UNIT})+)(?!\w)|(?P<seconds>{NUMBER})\s*(?:seconds?|secs?)\b)",
            re.IGNORECASE,
        )


@dataclass(frozen=True, slots=True)
class BatchPlace:
    """Where a provider keeps its Files and Batches API for a request URL, when not where OpenAI keeps it (the URL's
    root, endpoints named "/v1/...", lines naming their model)."""

    #: The root the /files and /batches paths hang from ("https://x.openai.azure.com/openai").
    root: str
    #: Added to every call's query ("api-version=2024-10-21").
    query: str
    #: How a batch and its lines name the endpoint, from its OpenAI name ("/v1/chat/completions" -> "/chat/completions").
    endpoint: Callable[[str], str]
    #: The model a line naming none is sent with (Azure's deployment).
    model: str | None = None


@dataclass(frozen=True, slots=True)
class Provider:
    """All the run needs to know of one provider's API that is not the same for every API."""

    #: As people write it: "OpenAI", "Azure OpenAI", "Anthropic".
    name: str
    #: Whether a request URL is this provider's API.
    serves: Callable[[str], bool]
    #: The environment variable its key is read from when none is given.
    key_variable: str
    #: The headers that carry a key (and any version header every request must name).
    auth_headers: Callable[[str | None], dict[str, str]]
    #: Hosts (or, starting with ".", host suffixes) of its own API, which refuse every request without a key.
    own_hosts: tuple[str, ...]
    #: Reads its rate-limit headers...
    parse_rate_limits: RateLimitParser
    #: ...when an answer carries any of these...
    rate_limit_headers: frozenset[str]
    #: ...and the least a real account's limit can be, per limit header (a lower one is ignored, with a warning).
    limit_floors: Mapping[str, float]
    errors: ErrorDialect
    #: Whether an answer's headers are its own kind, whatever the URL (a gateway may front it); None: the default
    #: provider's kind, read when no other provider claims them.
    claims_rate_limit_headers: Callable[[Mapping[str, str]], bool] | None = None
    #: The cheapest request each of its endpoints takes (by the endpoint's path, "chat/completions"), with a
    #: model every account may use: what `--show_limits` sends.
    probe_bodies: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: It limits output tokens apart (so that limit too is waited for before the first answer).
    limits_output_tokens: bool = False
    #: Why `--mode batch` cannot send its requests, or None when it speaks a batch API.
    batch_api_refusal: str | None = None
    #: Its `--mode batch` is a Message Batches API (requests in the create call, results by URL), not OpenAI's
    #: Files and Batches endpoints.
    message_batches: bool = False
    #: The most requests one of its batches takes (None: OpenAI's, `registry.BATCH_API_MAX_LINES`).
    batch_max_lines: int | None = None
    #: Where its Files and Batches API is for a request URL, when not OpenAI's way (None: the URL's root).
    batch_place: Callable[[str], BatchPlace | None] | None = None
    #: Its id in the price data (`genai-prices`), for a URL the price data does not recognise.
    price_provider: str | None = None
    #: Variables its key is read from, in turn, when `key_variable` is not set (Gemini's $GOOGLE_API_KEY).
    more_key_variables: tuple[str, ...] = ()
    #: Reads the wait an error body asks for, where the provider says it there and not in a header (Gemini's
    #: RetryInfo); None: its bodies say no wait but in words (`ErrorDialect.wait_words`).
    wait_in_body: Callable[[Any], float | None] | None = None
    #: Reads (input, output) tokens from an answer that has no OpenAI-style `usage` (Gemini's usageMetadata).
    usage_in_answer: Callable[[Mapping[str, Any]], tuple[int, int] | None] | None = None
    #: Reads an error body that says a per-day quota ran out (Gemini's QuotaFailure), at `now` (epoch seconds; None:
    #: the wall clock): which quota and when it resets, or None. Nothing passes before then: the run stops.
    quota_exhausted_for_the_day: Callable[[Any, float | None], str | None] | None = None
    #: The model a request URL names, where the URL names it and the body does not (Gemini's .../models/M:...).
    model_in_url: Callable[[str], str | None] | None = None

    def __repr__(self) -> str:
        return f"Provider({self.name!r})"

    @property
    def speaks_batch_api(self) -> bool:
        return self.batch_api_refusal is None

    def curl_auth(self, variable: str | None = None) -> str:
        """Its auth headers as curl options, the key left in its variable (`variable`, default its own): for a
        command to copy (never the key)."""
        return " ".join(f'-H "{name}: {value}"' for name, value in self.auth_headers(f"${variable or self.key_variable}").items())

    def owns_host(self, url: str) -> bool:
        """The URL is on this provider's own API host (not a gateway, not a local server)."""
        host = host_of(url)
        return any(host == own or (own.startswith(".") and host.endswith(own)) for own in self.own_hosts)
