"""`--show_limits`: the account's rate limits, asked of the API with one small request.

OpenAI has no endpoint that lists an account's limits, but every answer carries them in its
`x-ratelimit-*` headers (limits, what remains, when the bucket is full again). So one request is sent,
the cheapest the URL's endpoint takes (a 1-token chat completion, a one-word embedding), and the headers
of its answer are put in plain words. Limits are per model, so the model matters: the input file's first
model when there is an input file, else a small default. `--mode auto` asks the same way for the online capacity
its plan counts on (`auto_capacity`), where the limits are not given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from ..base.errors import TransportError
from ..config.credentials import auth_headers, scrubber_for
from ..config.settings import Settings
from ..core.deadline_plan import OnlineCapacity
from ..core.limiter import Limits
from ..core.retry_policy import Verdict, classify
from ..providers.endpoints import Endpoint, endpoint_from_url
from ..providers.registry import PROBE_BODIES, parse_rate_limit_headers, provider_for
from ..transport.http import AiohttpTransport, Transport, TransportRequest, outcome_of, outcome_of_error
from ..ui.text import format_duration

logger = logging.getLogger(__name__)

__all__ = ["PROBE_BODIES", "LimitsSeen", "probe_body", "probe_limits", "format_limits", "auto_capacity"]

#: Seconds the one request may take: a probe should not hang for the run's 10-minute default.
PROBE_TIMEOUT = 60.0


def probe_body(endpoint: Endpoint, model: str | None = None) -> dict[str, Any]:
    """The probe's body for this endpoint, naming `model` when given (limits are per model)."""
    body = dict(PROBE_BODIES[endpoint])
    if model is not None:
        body["model"] = model
    return body


@dataclass(frozen=True, slots=True)
class LimitsSeen:
    """What one answer said about the limits; None where a header was absent."""

    #: How the request went: "HTTP 200", or the error ("HTTP 401 invalid_api_key: ...", "ClientConnectorError: ...").
    outcome: str
    #: An HTTP answer came (whatever its status).
    answered: bool
    #: The API answered with success (a 2xx JSON body).
    succeeded: bool
    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens: float | None = None
    #: The output-token limit, where the API has one apart (None elsewhere).
    limit_output_tokens: float | None = None
    remaining_output_tokens: float | None = None

    @property
    def any_header(self) -> bool:
        values = (
            self.limit_requests, self.remaining_requests, self.reset_requests, self.limit_tokens, self.remaining_tokens, self.reset_tokens,
            self.limit_output_tokens, self.remaining_output_tokens,
        )
        return any(value is not None for value in values)


async def probe_limits(settings: Settings, body: Mapping[str, Any], transport: Transport) -> LimitsSeen:
    """Send `body` once to `settings.request_url` and read the rate-limit headers of the answer."""
    scrub = scrubber_for(settings)
    request = TransportRequest(settings.request_url, body, auth_headers(settings), min(settings.request_timeout, PROBE_TIMEOUT))
    try:
        outcome = outcome_of(await transport.send(request), scrub)
    except TransportError as error:
        outcome = outcome_of_error(error, scrub)
    decision = classify(outcome)
    report = parse_rate_limit_headers(outcome.headers)
    return LimitsSeen(
        outcome=scrub(decision.reason),
        answered=outcome.status is not None,
        succeeded=decision.verdict is Verdict.SUCCESS,
        limit_requests=report.limit_requests,
        remaining_requests=report.remaining_requests,
        reset_requests=report.reset_requests,
        limit_tokens=report.limit_tokens,
        remaining_tokens=report.remaining_tokens,
        reset_tokens=report.reset_tokens,
        limit_output_tokens=report.limit_output_tokens,
        remaining_output_tokens=report.remaining_output_tokens,
    )


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f}ms" if seconds < 1 else format_duration(seconds)


def format_limits(seen: LimitsSeen, *, url: str, model: str | None, default_model: bool = False) -> str:
    """The headers in plain words, with what to do when there are none. `default_model`: the model was not the user's."""
    if not seen.answered:
        return f"no answer from {url}: {seen.outcome}"
    if not seen.succeeded and not seen.any_header:
        return f"the request to {url} failed, and its answer states no rate limits: {seen.outcome}"
    model_text = f" for {model}" if model else ""
    lines = [f"rate limits{model_text} at {url}, from the headers of one small request ({seen.outcome}):"]
    if not seen.any_header:
        lines.append(
            "  the API sent no rate-limit headers (x-ratelimit-*), so its limits cannot be read here. Leave the limit flags "
            "at auto (the run then backs off on 429s) or give --max_requests_per_minute and --max_tokens_per_minute."
        )
        return "\n".join(lines)
    rows = [
        ("requests", seen.limit_requests, seen.remaining_requests, seen.reset_requests),
        ("tokens" if seen.limit_output_tokens is None else "input tokens", seen.limit_tokens, seen.remaining_tokens, seen.reset_tokens),
    ]
    if seen.limit_output_tokens is not None or seen.remaining_output_tokens is not None:
        rows.append(("output tokens", seen.limit_output_tokens, seen.remaining_output_tokens, None))
    width = max(9, *(len(row[0]) + 1 for row in rows))
    for unit, limit, remaining, reset in rows:
        parts = [f"{limit:,.0f} per minute" if limit is not None else "limit not stated"]
        if remaining is not None:
            parts.append(f"{remaining:,.0f} left now")
        if reset is not None:
            parts.append(f"full again in {_duration(reset)}" if reset > 0 else "full now")
        lines.append(f"  {unit:<{width}} {'; '.join(parts)}")
    if model and default_model:
        lines.append("  (limits are per model; with --requests_filepath, the file's first model is asked about)")
    return "\n".join(lines)


async def auto_capacity(settings: Settings, transport: Transport | None = None, model: str | None = None) -> OnlineCapacity:
    """The online limits the rescue counts on: the ones given, else learned from one small request's rate-limit
    headers (as --show_limits asks); a limit neither given nor stated stays unknown (the plan then tries no batch).
    Where the API limits output tokens apart (Anthropic) and no output limit is given, the request is made even
    with other limits given: the output limit often binds, and each limit is then the lower of given and stated, as
    the online run takes them."""
    limits = settings.limits
    output_unknown = provider_for(settings.request_url).limits_output_tokens and limits.output_tokens_per_minute is None
    given = OnlineCapacity.of(limits, settings.headroom)
    if given.known and not output_unknown:
        return given
    own = transport is None
    sender = transport if transport is not None else AiohttpTransport(max_connections=1)
    try:
        seen = await probe_limits(settings, probe_body(endpoint_from_url(settings.request_url), model), sender)
    finally:
        if own:
            await cast(AiohttpTransport, sender).aclose()
    stated = Limits(seen.limit_requests, seen.limit_tokens, output_tokens_per_minute=seen.limit_output_tokens)
    capacity = OnlineCapacity.of(limits.lower(stated), settings.headroom)
    if not capacity.known:
        logger.warning("the API stated no rate limits (%s): give --max_requests_per_minute for --mode auto to plan a rescue", seen.outcome)
    return capacity
