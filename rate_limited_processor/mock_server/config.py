"""What the mock API should behave like: its limits, speed, failures and key, in one frozen value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, get_args

from ..core.limiter import Limits
from .faults import validate_faults

__all__ = ["MockConfig", "TokenCounting", "RateLimitStyle", "DEFAULT_MODEL", "ORGANIZATION"]

TokenCounting = Literal["tiktoken", "chars"]
#: How a rate-limit 429 reads: "openai" (OpenAI's JSON body, "Please try again in <the exact wait>"),
#: "silent" (the same JSON error with no hint at all), "html" (a gateway's HTML page, as nginx limit_req sends).
RateLimitStyle = Literal["openai", "silent", "html"]

#: Named in responses and rate-limit messages when a request carries no "model".
DEFAULT_MODEL = "gpt-4o-mini"
#: The organization rate-limit messages name, as OpenAI names yours.
ORGANIZATION = "org-mock"
_TOKEN_COUNTING_MODES: tuple[TokenCounting, ...] = ("tiktoken", "chars")


@dataclass(frozen=True, slots=True)
class MockConfig:
    """How the mock behaves. The defaults are a perfect, unlimited, instant API with no key."""

    #: Requests per minute; None means unlimited.
    requests_per_minute: float | None = None
    #: Tokens per minute (prompt + completion budget, as OpenAI counts); None means unlimited.
    tokens_per_minute: float | None = None
    #: Output tokens per minute (Anthropic's OTPM, for /v1/messages): charged at max_tokens, refunded to use.
    output_tokens_per_minute: float | None = None
    #: Gemini's requests per day (generateContent only), counted per Pacific calendar day; None means unlimited.
    requests_per_day: int | None = None
    #: Output tokens each Messages answer generates (cut off at the request's max_tokens).
    output_tokens: int = 40
    #: Bucket capacity in seconds of the limit: 60 allows a whole minute at once, 1 (OpenAI-like) one second.
    burst_seconds: float = 1.0
    #: The output-token bucket's capacity in seconds of OTPM. None: a minute ("continuously replenished up to
    #: your maximum limit"); 1: enforced over one second, as Anthropic says its limits may be, so one
    #: `max_tokens` reservation can exceed it and take the bucket into debt until the answer refunds the rest.
    output_burst_seconds: float | None = None
    #: "tiktoken" counts tokens with the tokenizer; "chars" counts characters / 4 as OpenAI's limiter does.
    token_counting: TokenCounting = "tiktoken"
    #: Force one tiktoken encoding; None lets the estimator pick it from each request's model.
    token_encoding_name: str | None = None
    #: Seconds before a successful answer is sent.
    latency: float = 0.0
    #: Up to this many extra seconds (uniformly drawn) on top of `latency`.
    latency_jitter: float = 0.0
    #: When above 0, `latency` is the median of a lognormal draw with this sigma (1.0: one answer in twenty
    #: takes over 5x the median, as reasoning models' do), before the jitter is added.
    latency_sigma: float = 0.0
    #: A streamed answer's first event goes out after the latency; its first token this many seconds later.
    time_to_first_token: float = 0.0
    #: Seconds between two tokens of a streamed answer.
    inter_token_gap: float = 0.0
    #: Fault kind ("500", "503", "reset", "hang", "html_502", "insufficient_quota", "too_large", "401",
    #: "azure_429") -> probability per request. Applied before the rate limiter: faults cost no budget.
    faults: Mapping[str, float] = field(default_factory=dict)
    #: The first this many requests are never faulted (so a run can get going before trouble starts).
    faults_after: int = 0
    #: The chance that a Flex request (`"service_tier": "flex"`) finds no capacity: a 429 `resource_unavailable`,
    #: charged to no limit. Drawn per Flex request in arrival order, seeded by `seed`.
    flex_unavailable: float = 0.0
    #: Seeds the fault draws and the latency jitter, so a run can be replayed.
    seed: int = 0
    #: When set, requests must carry `Authorization: Bearer <key>` (or `api-key: <key>` on Azure paths).
    api_key: str | None = field(default=None, repr=False)
    #: Add `retry-after` and `retry-after-ms` to rate-limit 429s (OpenAI sends them only sometimes).
    retry_after_header: bool = False
    #: Send `x-ratelimit-*` headers; off plays a gateway that hides the limits from the client.
    ratelimit_headers: bool = True
    #: How a rate-limit 429 reads (see `RateLimitStyle`); "silent" and "html" also send no x-ratelimit headers.
    rate_limit_style: RateLimitStyle = "openai"
    #: With "openai" 429s, hint this many seconds instead of the exact wait (a server whose hints are no help).
    rate_limit_hint: float | None = None
    #: The model named when a request names none.
    model: str = DEFAULT_MODEL
    #: The Batch API (see `batches.py`): seconds a new batch validates, seconds from its creation to its end.
    batch_validation_seconds: float = 0.5
    batch_processing_seconds: float = 5.0
    #: Fractions of a batch's lines answered 500, and left to expire (the batch then ends "expired").
    batch_failed_lines: float = 0.0
    batch_expired_lines: float = 0.0
    #: Tokens (as `token_counting` counts them) a model's running batches may hold; a batch past it fails
    #: with `token_limit_exceeded`. None: no limit.
    batch_enqueued_token_limit: int | None = None
    #: Message Batches (see `anthropic_batches.py`): batches stay in progress until cancelled; and seconds the
    #: create's answer is held after the batch exists.
    batch_never_ends: bool = False
    batch_create_delay: float = 0.0
    #: The first this many calls that make something at a batch API (an input file uploaded, a batch or a Message
    #: Batch created) are made, then answered 504 by the gateway in front (nginx's page, as after its
    #: `proxy_read_timeout`): the client cannot tell it was made.
    batch_create_timeouts: int = 0
    #: The fraction of a batch's lines it completes (at an even pace from validation to its end) before it makes
    #: no more progress, as real batches stuck at 95% do: below 1 it never ends on its own (it stays in_progress
    #: until cancelled, or expires when its 24h window runs out). Message Batches too.
    batch_stall_at: float = 1.0
    #: Seconds a cancelled batch stays "cancelling" (lines due meanwhile still complete) before it is "cancelled"
    #: (a Message Batch "canceling", then "ended": a second when this is 0).
    batch_cancelling_seconds: float = 0.0

    def __post_init__(self) -> None:
        _ = self.limits  # Limits checks the rates and burst_seconds
        if self.rate_limit_style not in get_args(RateLimitStyle):
            raise ValueError(f"rate_limit_style must be one of {get_args(RateLimitStyle)}, got {self.rate_limit_style!r}")
        if self.rate_limit_hint is not None and not self.rate_limit_hint >= 0:
            raise ValueError(f"rate_limit_hint must be a number of seconds >= 0, got {self.rate_limit_hint}")
        if self.token_counting not in _TOKEN_COUNTING_MODES:
            raise ValueError(f"token_counting must be one of {_TOKEN_COUNTING_MODES}, got {self.token_counting!r}")
        if self.latency < 0 or self.latency_jitter < 0 or self.latency_sigma < 0:
            raise ValueError(
                f"latency and latency_jitter must not be negative, got {self.latency} and {self.latency_jitter}"
            )
        if self.output_burst_seconds is not None and not self.output_burst_seconds > 0:
            raise ValueError(f"output_burst_seconds must be positive, got {self.output_burst_seconds}")
        if self.requests_per_day is not None and self.requests_per_day < 1:
            raise ValueError(f"requests_per_day must be at least 1, got {self.requests_per_day}")
        if self.output_tokens < 1:
            raise ValueError(f"output_tokens must be at least 1, got {self.output_tokens}")
        if not (self.time_to_first_token >= 0 and self.inter_token_gap >= 0):
            raise ValueError(f"time_to_first_token and inter_token_gap must be seconds >= 0, got {self.time_to_first_token} and {self.inter_token_gap}")
        if not 0 <= self.batch_validation_seconds <= self.batch_processing_seconds:
            raise ValueError("batch_validation_seconds must be >= 0 and at most batch_processing_seconds")
        if not (0 <= self.batch_stall_at <= 1 and self.batch_cancelling_seconds >= 0):
            raise ValueError("batch_stall_at must be a fraction, batch_cancelling_seconds >= 0")
        fractions = (self.batch_failed_lines, self.batch_expired_lines)
        if min(fractions) < 0 or sum(fractions) > 1:
            raise ValueError("batch_failed_lines and batch_expired_lines must be fractions adding up to at most 1")
        if self.batch_create_timeouts < 0:
            raise ValueError(f"batch_create_timeouts must not be negative, got {self.batch_create_timeouts}")
        if not self.batch_create_delay >= 0:
            raise ValueError(f"batch_create_delay must be seconds >= 0, got {self.batch_create_delay}")
        if not 0 <= self.flex_unavailable <= 1:
            raise ValueError(f"flex_unavailable must be a probability within [0, 1], got {self.flex_unavailable}")
        if self.faults_after < 0:
            raise ValueError(f"faults_after must not be negative, got {self.faults_after}")
        checked = validate_faults(self.faults)
        # Frozen all the way down: a shared default config must not be changed by one test for the next.
        object.__setattr__(self, "faults", MappingProxyType({kind.value: p for kind, p in checked.items()}))

    @property
    def limits(self) -> Limits:
        """The limits as the project's bucket code takes them."""
        return Limits(self.requests_per_minute, self.tokens_per_minute, self.burst_seconds, self.output_tokens_per_minute)
