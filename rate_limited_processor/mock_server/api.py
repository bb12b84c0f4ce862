"""The mock API itself, without sockets: a request in, an answer out, everything recorded.

For each request, in order: route it by its path, draw a fault (faults cost no budget, like an outage in
front of the API), check the key, check the body, count its tokens, ask the rate-limit gate, wait out the
configured latency, answer. Everything it does is appended to `MockApi.record`.

A request whose body says `"stream": true` (chat, completions, Responses, Anthropic's Messages) is answered
with a `StreamReply`: server-sent events built from the same answer (`streams.py`). Its first event goes
out after the latency, its first token `time_to_first_token` later, and every further token
`inter_token_gap` after the one before; the record keeps when each went out (`Served.first_token_at`,
`token_times`, `finished_at`).

Two adapters serve it: `app.py` on a real socket (aiohttp), and `transport.py` in process, as the
runner's transport, so a whole run can be rehearsed against the same strict mock in virtual time.

Paths:
    POST /v1/{chat/completions, completions, embeddings, responses}
    POST /v1/messages                                                   (Anthropic's, see `anthropic.py`)
    POST /{version}/models/{model}:generateContent                      (Gemini's, see `gemini.py`)
    POST /openai/deployments/{deployment}/{endpoint}?api-version=...   (Azure's form)
    /v1/files..., /v1/batches...                                        (the Batch API: `batches.py`)
    /v1/messages/batches...                                             (Message Batches: `anthropic_batches.py`)
"""

from __future__ import annotations

import asyncio
import hmac
import random
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..base import strict_json
from ..base.clock import Now, loop_time
from ..providers.endpoints import Endpoint
from . import anthropic, errors, gemini
from .anthropic_batches import MockMessageBatches
from .batches import MockBatches
from .config import MockConfig
from .counting import CountingError, TokenCounter
from .faults import FaultKind, FaultPlan
from .rate_limits import RateLimitGate, Rejection
from .record import CUT, DISCONNECTED, HANG, RESET, Outcome, Served, ServedLog, raw_request_key, request_key
from .reply import JSON, Reply, json_reply
from .responses import body_problem, success_payload
from .streams import Frames, stream_frames, wants_stream

__all__ = ["MockApi", "MockRequest", "Drop", "StreamReply", "Answer", "route", "OPENAI_PREFIX", "AZURE_PREFIX", "HANG_SECONDS"]

OPENAI_PREFIX = "/v1"
AZURE_PREFIX = "/openai/deployments"
#: How long a "hang" lasts: far beyond any sensible client timeout. The client's disconnect (or the
#: server's shutdown) cancels it long before.
HANG_SECONDS = 3_600.0
#: The TPM limit quoted by an injected "too_large" when the mock has no TPM limit of its own.
FAULT_TOO_LARGE_LIMIT = 30_000
_BEARER = "bearer "
_NOT_JSON = object()


@dataclass(frozen=True, slots=True)
class MockRequest:
    """What the mock reads of a request: its path, query, headers (names in lower case) and body bytes."""

    path: str
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    query: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class Drop:
    """No answer at all: the connection is reset, as a crashing proxy does."""


@dataclass(frozen=True, slots=True)
class StreamReply:
    """A 200 whose body is server-sent events, produced as they are due (iterate `chunks` to send them)."""

    headers: Mapping[str, str]
    chunks: AsyncGenerator[bytes, None] = field(repr=False)
    status: int = 200
    content_type: str = "text/event-stream"


Answer = Reply | Drop | StreamReply

#: The streamed endpoints (embeddings never stream).
_STREAMED = frozenset({Endpoint.CHAT_COMPLETIONS, Endpoint.COMPLETIONS, Endpoint.RESPONSES, Endpoint.MESSAGES})


def route(path: str) -> tuple[Endpoint, str | None] | None:
    """The endpoint a path names, and the Azure deployment when it has one; None for a path not served."""
    if gemini.serves(path):
        return Endpoint.GENERATE_CONTENT, None
    if path.startswith(OPENAI_PREFIX + "/"):
        deployment, rest = None, path[len(OPENAI_PREFIX) + 1 :]
    elif path.startswith(AZURE_PREFIX + "/"):
        deployment, _, rest = path[len(AZURE_PREFIX) + 1 :].partition("/")
        if not deployment:
            return None
    else:
        return None
    try:
        return Endpoint(rest.strip("/")), deployment
    except ValueError:
        return None


def _parse_body(raw: bytes) -> Any:
    """The body as the client's own reader would take it: strict JSON, or not JSON at all (a 400)."""
    try:
        return strict_json.loads(raw)
    except strict_json.InvalidJSON:
        return _NOT_JSON


def _presented_keys(request: MockRequest) -> list[str]:
    """The key a request carries where its API looks for it: `api-key` on Azure paths (as Azure's key
    auth does), `x-api-key` on Anthropic's, `Authorization: Bearer …` elsewhere, so a client sending the
    wrong header is caught."""
    if request.path.rstrip("/").endswith("/" + Endpoint.MESSAGES.value) or MockMessageBatches.serves(request.path):
        key = anthropic.presented_key(request.headers)
        return [] if key is None else [key]
    if gemini.serves(request.path):
        key = gemini.presented_key(request.headers)
        return [] if key is None else [key]
    if request.path.startswith(AZURE_PREFIX) or request.path.startswith(("/openai/files", "/openai/batches")):
        api_key = request.headers.get("api-key")
        return [] if api_key is None else [api_key.strip()]
    authorization = request.headers.get("authorization", "")
    if authorization[: len(_BEARER)].lower() == _BEARER:
        return [authorization[len(_BEARER) :].strip()]
    return []


@dataclass(frozen=True, slots=True)
class _Decision:
    """The answer to a request that met no fault, and what the record keeps about it."""

    reply: Reply
    #: Tokens charged against TPM (only an admitted request is charged).
    tokens: int = 0
    #: The wait a rate-limit 429 announced.
    retry_after: float | None = None
    #: Reserved output tokens the answer did not use, given back when it ends (Anthropic's).
    output_refund: int = 0


class MockApi:
    """The mock's state (the config, the fault plan, the rate-limit gate and the record) and its answers.

    `clock` defaults to the running event loop's time, so on a test's virtual-time loop the gate's buckets
    and the latency both run on virtual time.
    """

    __slots__ = (
        "config", "record", "batches", "message_batches", "gemini_day", "_clock", "_wall", "_faults", "_gate", "_counter", "_latency_rng",
        "_flex_rng", "_in_flight", "_timeouts_left",
    )

    config: MockConfig
    #: Every request that reached the handler, and what it was answered (the online endpoints').
    record: ServedLog
    #: The files and batches of the Batch API.
    batches: MockBatches
    #: The Message Batches.
    message_batches: MockMessageBatches
    #: Gemini's requests per day (`MockConfig.requests_per_day`); `gemini_day.turn_the_day()` reaches tomorrow.
    gemini_day: gemini.RequestsPerDay

    def __init__(
        self, config: MockConfig | None = None, *, record: ServedLog | None = None, clock: Now = loop_time, wall: Now | None = None
    ) -> None:
        """`wall`: `clock` as epoch seconds, for the RFC 3339 times Anthropic's headers state (default: `clock`
        placed on the calendar now)."""
        config = config if config is not None else MockConfig()
        self.config = config
        self.record = record if record is not None else ServedLog()
        self._clock = clock
        self._wall = wall if wall is not None else (lambda: time.time() - time.monotonic() + clock())
        self.batches = MockBatches(config, clock)
        self.message_batches = MockMessageBatches(config, clock, self._wall)
        self.gemini_day = gemini.RequestsPerDay(config.requests_per_day, self._wall)
        self._faults = FaultPlan(config.faults, seed=config.seed, after=config.faults_after)
        self._gate = RateLimitGate(config.limits, now=clock(), output_burst_seconds=config.output_burst_seconds)
        self._counter = TokenCounter(config.token_counting, config.token_encoding_name)
        # Its own generator, so the latency drawn never shifts the fault sequence.
        self._latency_rng = random.Random(f"latency-{config.seed}")
        self._flex_rng = random.Random(f"flex-{config.seed}")
        self._in_flight: set[asyncio.Task[Any]] = set()
        #: Creates still to be answered by the gateway's 504 once made (`MockConfig.batch_create_timeouts`).
        self._timeouts_left = config.batch_create_timeouts

    def __repr__(self) -> str:
        return f"MockApi({self.config!r}, {self.record!r})"

    def warm_up(self) -> None:
        """Load the tokenizer now rather than during the first request, when token counting is needed."""
        if self._gate.counts_tokens:
            sample = {"model": self.config.model, "messages": [{"role": "user", "content": "warm up"}]}
            self._counter.count(Endpoint.CHAT_COMPLETIONS, sample)

    def cancel_in_flight(self) -> None:
        """Cancel every answer still being prepared (hangs, latency sleeps) so the server can stop at once."""
        for task in list(self._in_flight):
            task.cancel()

    async def answer(self, request: MockRequest) -> Answer:
        """The answer to one request: a reply, or `Drop` for a reset. A hang waits until it is cancelled."""
        if MockMessageBatches.serves(request.path):
            return await self._message_batches(request)
        if MockBatches.serves(request.path):
            auth_failure = self._auth_failure(request)
            if auth_failure is not None:
                return auth_failure
            made = len(self.batches.uploads) + len(self.batches.created)
            reply = self.batches.answer(request.method, request.path, request.query, request.headers, request.body)
            return self._after_making(reply, made < len(self.batches.uploads) + len(self.batches.created))
        routed = route(request.path)
        if routed is None or request.method != "POST":
            return errors.not_found(request.path)
        endpoint, deployment = routed
        api_version = request.query.get("api-version") if deployment is not None else None
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            arrived_at = self._clock()
            # Drawn on arrival, before any await, so the n-th request to arrive gets the n-th draw.
            fault = self._faults.next()
            body = _parse_body(request.body)
            key = raw_request_key(request.body) if body is _NOT_JSON else request_key(body)
            model = deployment
            if isinstance(body, Mapping) and isinstance(body.get("model"), str):
                model = body["model"]
            model = model or self.config.model
            streamed = endpoint in _STREAMED and wants_stream(body)
            if fault is not None and not (fault is FaultKind.STREAM_CUT and streamed):
                return await self._inject(fault, request, endpoint, arrived_at, key, model, api_version)
            decision = self._decide(request, endpoint, body, key, model)
            if decision.reply.status == 200:
                await self._delay(endpoint, arrived_at, key, decision.tokens)
                self._gate.refund(decision.output_refund, self._clock())
                if streamed:
                    frames = self._frames(endpoint, body, decision.reply)
                    chunks = self._stream(frames, Served(arrived_at, endpoint, 200, key, decision.tokens), cut=fault is not None)
                    return StreamReply(decision.reply.headers, chunks)
            finished_at = self._clock() if decision.reply.status == 200 else None
            self.record.append(Served(arrived_at, endpoint, decision.reply.status, key, decision.tokens, decision.retry_after, finished_at=finished_at))
            return decision.reply
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _message_batches(self, request: MockRequest) -> Answer:
        auth_failure = self._auth_failure(request)
        if auth_failure is not None:
            return anthropic.invalid_api_key() if request.headers.get("x-api-key") else anthropic.missing_api_key()
        origin = f"http://{request.headers.get('host', 'localhost')}"
        created = len(self.message_batches.created)
        reply = self.message_batches.answer(request.method, request.path, request.query, request.headers, request.body, origin)
        if len(self.message_batches.created) > created and self.config.batch_create_delay:
            await asyncio.sleep(self.config.batch_create_delay)  # the batch exists; its id is not yet told
        return self._after_making(reply, len(self.message_batches.created) > created)

    def _after_making(self, reply: Reply, made: bool) -> Reply:
        """The answer to a call that made a file or batch: its own, or the gateway's 504 while timeouts are due."""
        if not made or self._timeouts_left <= 0:
            return reply
        self._timeouts_left -= 1
        return errors.html_gateway_timeout()

    # --- The request, step by step ---------------------------------------------------------------------

    def _rate_limit_headers(self, endpoint: Endpoint) -> dict[str, str]:
        """The x-ratelimit-* headers (Anthropic's own for /v1/messages) as they stand now; none when playing
        a gateway that sends none."""
        if not (self.config.ratelimit_headers and self.config.rate_limit_style == "openai") or endpoint is Endpoint.GENERATE_CONTENT:
            return {}  # Gemini states no limits in headers
        if endpoint is Endpoint.MESSAGES:
            return anthropic.headers(self._gate, self._clock(), self._wall())
        return self._gate.headers(self._clock())

    def _decide(self, request: MockRequest, endpoint: Endpoint, body: Any, key: str, model: str) -> _Decision:
        """401, 400, 429 or 200, with the rate-limit headers as they stand after the decision."""
        if endpoint is Endpoint.GENERATE_CONTENT:
            return self._check_gemini(request, body, key)
        decision = (
            self._check_message(request, body, key, model)
            if endpoint is Endpoint.MESSAGES
            else self._check(request, endpoint, body, key, model)
        )
        reply = decision.reply.with_headers(self._rate_limit_headers(endpoint))
        return _Decision(reply, decision.tokens, decision.retry_after, decision.output_refund)

    def _check_message(self, request: MockRequest, body: Any, key: str, model: str) -> _Decision:
        """Anthropic's Messages API: the same steps, its own shapes, and output tokens reserved at max_tokens."""
        if self._auth_failure(request) is not None:
            return _Decision(anthropic.invalid_api_key())
        problem = "The request body is not valid JSON." if body is _NOT_JSON else anthropic.body_problem(body)
        if problem is not None:
            return _Decision(anthropic.invalid_request(problem))
        tokens = 0
        if self._gate.counts_tokens:
            try:
                tokens = self._counter.count(Endpoint.MESSAGES, body)
            except CountingError as error:
                return _Decision(anthropic.invalid_request(str(error)))
        reserved = int(body["max_tokens"])
        rejection = self._gate.admit(tokens, self._clock(), output_tokens=reserved)
        if rejection is not None:
            if self.config.rate_limit_style == "html":
                return _Decision(errors.html_too_many_requests(), retry_after=rejection.wait)
            hint = rejection.wait if self.config.rate_limit_hint is None else self.config.rate_limit_hint
            return _Decision(anthropic.rate_limited(rejection, hint=hint if self.config.rate_limit_style == "openai" else None), retry_after=rejection.wait)
        used = anthropic.output_used(body, self.config.output_tokens)
        payload = anthropic.message_payload(body, model=model, key=key, input_tokens=tokens, output_tokens=used)
        return _Decision(json_reply(200, payload), tokens, output_refund=reserved - used)

    def _check_gemini(self, request: MockRequest, body: Any, key: str) -> _Decision:
        """Gemini's generateContent: its key header, its 400s, a 429 whose wait is in the body, no headers."""
        if self._auth_failure(request) is not None:
            return _Decision(gemini.invalid_api_key())
        problem = "Invalid JSON payload received." if body is _NOT_JSON else gemini.body_problem(body)
        if problem is not None:
            return _Decision(gemini.invalid_request(problem))
        tokens = 0
        if self._gate.counts_tokens:
            try:
                tokens = self._counter.count(Endpoint.GENERATE_CONTENT, body)
            except CountingError as error:
                return _Decision(gemini.invalid_request(str(error)))
        model = gemini.model_of_path(request.path) or self.config.model
        day = self.gemini_day
        if day.limit is not None and day.exhausted():
            wait = day.seconds_to_next_minute()
            return _Decision(gemini.day_quota_exhausted(model, day.limit, wait=wait), retry_after=gemini.announced_wait(wait))
        rejection = self._gate.admit(tokens, self._clock())
        if rejection is not None:
            wait = rejection.wait if self.config.rate_limit_hint is None else self.config.rate_limit_hint
            return _Decision(gemini.rate_limited(rejection, model, wait=wait), retry_after=gemini.announced_wait(wait))
        day.admitted()
        answer = gemini.payload(body, model=model, key=key, input_tokens=tokens, output_tokens=self.config.output_tokens)
        return _Decision(json_reply(200, answer), tokens)

    def _check(self, request: MockRequest, endpoint: Endpoint, body: Any, key: str, model: str) -> _Decision:
        auth_failure = self._auth_failure(request)
        if auth_failure is not None:
            return _Decision(auth_failure)
        if body is _NOT_JSON:
            return _Decision(errors.invalid_json())
        problem = body_problem(endpoint, body)
        if problem is not None:
            return _Decision(errors.invalid_request(problem))
        tokens = 0
        if self._gate.counts_tokens:
            try:
                tokens = self._counter.count(endpoint, body)
            except CountingError as error:
                return _Decision(errors.invalid_request(str(error)))
            if self._gate.too_large(tokens):
                limit = self.config.tokens_per_minute or 0
                return _Decision(errors.request_too_large(model=model, limit=limit, requested=tokens))
        if body.get("service_tier") == "flex" and self.config.flex_unavailable and self._flex_rng.random() < self.config.flex_unavailable:
            return _Decision(errors.flex_unavailable())  # Flex has no capacity now: charged to no limit
        rejection = self._gate.admit(tokens, self._clock())
        if rejection is not None:
            return _Decision(self._rate_limited(rejection, model), retry_after=rejection.wait)
        return _Decision(json_reply(200, success_payload(endpoint, body, model=model, key=key)), tokens)

    def _rate_limited(self, rejection: Rejection, model: str) -> Reply:
        """The 429 for a request the gate turned away, in the configured style."""
        style = self.config.rate_limit_style
        if style == "html":
            return errors.html_too_many_requests()
        hint = rejection.wait if self.config.rate_limit_hint is None else self.config.rate_limit_hint
        return errors.rate_limited(
            rejection.limit_name,
            model=model,
            limit=rejection.limit,
            used=rejection.used,
            requested=rejection.requested,
            wait=hint if style == "openai" else None,
            retry_after_header=self.config.retry_after_header,
        )

    def _auth_failure(self, request: MockRequest) -> Reply | None:
        expected = self.config.api_key
        if expected is None:
            return None
        presented = _presented_keys(request)
        if not presented:
            return errors.missing_api_key()
        if any(hmac.compare_digest(key.encode(), expected.encode()) for key in presented):
            return None
        return errors.invalid_api_key(presented[0])

    async def _delay(self, endpoint: Endpoint, arrived_at: float, key: str, tokens: int) -> None:
        """Wait out the configured latency; a client that leaves meanwhile is recorded as DISCONNECTED."""
        delay = self.config.latency
        if self.config.latency_sigma:
            delay *= self._latency_rng.lognormvariate(0.0, self.config.latency_sigma)
        if self.config.latency_jitter:
            delay += self._latency_rng.uniform(0.0, self.config.latency_jitter)
        if delay <= 0:
            return
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.record.append(Served(arrived_at, endpoint, DISCONNECTED, key, tokens))
            raise

    def _frames(self, endpoint: Endpoint, body: Mapping[str, Any], reply: Reply) -> Frames:
        options = body.get("stream_options")
        include_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        return stream_frames(endpoint, reply.json(), include_usage=include_usage)

    async def _stream(self, frames: Frames, served: Served, *, cut: bool) -> AsyncGenerator[bytes, None]:
        """Send the events as they are due, and record when each went out. With `cut`, stop half way: the
        body ends with no [DONE], as when a proxy times a stream out."""
        config = self.config
        first_byte_at = self._clock()
        token_times: list[float] = []
        steps = frames.tokens[: len(frames.tokens) // 2] if cut else frames.tokens
        outcome: Outcome = DISCONNECTED
        try:
            for frame in frames.head:
                yield frame
            for step, events in enumerate(steps):
                await asyncio.sleep(config.time_to_first_token if step == 0 else config.inter_token_gap)
                token_times.append(self._clock())
                for frame in events:
                    yield frame
            if not cut:
                for frame in frames.tail:
                    yield frame
            outcome = CUT if cut else 200
        finally:
            self.record.append(replace(
                served, outcome=outcome, first_byte_at=first_byte_at, first_token_at=token_times[0] if token_times else None,
                token_times=tuple(token_times), finished_at=self._clock(),
            ))

    async def _inject(
        self,
        fault: FaultKind,
        request: MockRequest,
        endpoint: Endpoint,
        arrived_at: float,
        key: str,
        model: str,
        api_version: str | None,
    ) -> Answer:
        """Answer with the fault instead of the API; nothing is charged to the rate limits."""
        if fault in (FaultKind.RESET, FaultKind.STREAM_CUT):  # a cut of a request that asked for no stream: a reset
            self.record.append(Served(arrived_at, endpoint, RESET, key))
            return Drop()
        if fault is FaultKind.HANG:
            self.record.append(Served(arrived_at, endpoint, HANG, key))
            await asyncio.sleep(HANG_SECONDS)
            return errors.server_error()
        reply = self._fault_reply(fault, request, endpoint, model, api_version)
        if reply.content_type == JSON:
            reply = reply.with_headers(self._rate_limit_headers(endpoint))
        retry_after = float(errors.AZURE_RETRY_AFTER_SECONDS) if fault is FaultKind.AZURE_429 else None
        self.record.append(Served(arrived_at, endpoint, reply.status, key, retry_after=retry_after))
        return reply

    def _fault_reply(self, fault: FaultKind, request: MockRequest, endpoint: Endpoint, model: str, api_version: str | None) -> Reply:
        if fault is FaultKind.SERVER_ERROR:
            return errors.server_error()
        if fault is FaultKind.OVERLOADED:
            return errors.overloaded()
        if fault is FaultKind.HTML_502:
            return errors.html_bad_gateway()
        if fault is FaultKind.INSUFFICIENT_QUOTA:
            return errors.insufficient_quota()
        if fault is FaultKind.TOO_LARGE:
            limit = self.config.tokens_per_minute or FAULT_TOO_LARGE_LIMIT
            return errors.request_too_large(model=model, limit=limit, requested=int(limit) + 1)
        if fault is FaultKind.INVALID_KEY:
            presented = _presented_keys(request)
            return errors.invalid_api_key(presented[0]) if presented else errors.missing_api_key()
        if fault is FaultKind.AZURE_429:
            return errors.azure_rate_limited(endpoint, api_version or errors.DEFAULT_AZURE_API_VERSION)
        if fault is FaultKind.ANTHROPIC_529:
            return anthropic.overloaded()
        raise AssertionError(f"fault {fault} has no reply")  # RESET and HANG are handled by the caller
