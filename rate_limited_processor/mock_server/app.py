"""The aiohttp side of the mock: routes, and the handler that composes the pure pieces.

For each request, in order: draw a fault (faults cost no budget, like an outage in front of the API), check
the key, check the body, count its tokens, ask the rate-limit gate, wait out the configured latency, answer.
Everything it does is appended to `MockApi.record`.

Routes:
    POST /v1/{chat/completions, completions, embeddings, responses}
    POST /openai/deployments/{deployment}/{endpoint}?api-version=...   (Azure's form)
    GET  /mock/stats                                                    (the record's summary, as JSON)
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from ..endpoints import Endpoint
from . import errors
from .config import MockConfig
from .counting import CountingError, TokenCounter
from .faults import FaultKind, FaultPlan
from .rate_limits import RateLimitGate
from .record import DISCONNECTED, HANG, RESET, Served, ServedLog, raw_request_key, request_key
from .reply import JSON, Reply, json_reply
from .responses import body_problem, success_payload

__all__ = ["MockApi", "create_app", "STATS_PATH", "OPENAI_PREFIX", "AZURE_PREFIX"]

Clock = Callable[[], float]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OPENAI_PREFIX = "/v1"
AZURE_PREFIX = "/openai/deployments"
STATS_PATH = "/mock/stats"
#: How long a "hang" lasts: far beyond any sensible client timeout. The client's disconnect (or the
#: server's shutdown) cancels it long before.
HANG_SECONDS = 3_600.0
#: The TPM limit quoted by an injected "too_large" when the mock has no TPM limit of its own.
FAULT_TOO_LARGE_LIMIT = 30_000
#: Bodies up to this size are read (embedding batches and long chats run to megabytes).
MAX_BODY_BYTES = 64 * 1024**2
#: SO_LINGER on, timeout 0: closing the socket sends RST, so the client sees "connection reset by peer".
_LINGER_RESET = struct.pack("ii", 1, 0)
_BEARER = "bearer "
_NOT_JSON = object()


def _parse_body(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return _NOT_JSON


def _presented_keys(request: web.Request) -> list[str]:
    """The key a request carries where its API looks for it: `api-key` on Azure paths (as Azure's key
    auth does), `Authorization: Bearer …` elsewhere, so a client sending the wrong header is caught."""
    if request.path.startswith(AZURE_PREFIX):
        api_key = request.headers.get("api-key")
        return [] if api_key is None else [api_key.strip()]
    authorization = request.headers.get("Authorization", "")
    if authorization[: len(_BEARER)].lower() == _BEARER:
        return [authorization[len(_BEARER) :].strip()]
    return []


def _to_response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type, headers=reply.headers)


def _reset_connection(request: web.Request) -> None:
    """Drop the connection with a TCP reset and no response, as a crashing proxy does."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


@dataclass(frozen=True, slots=True)
class _Decision:
    """The answer to a request that met no fault, and what the record keeps about it."""

    reply: Reply
    #: Tokens charged against TPM (only an admitted request is charged).
    tokens: int = 0
    #: The wait a rate-limit 429 announced.
    retry_after: float | None = None


class MockApi:
    """The handler and its state: the config, the fault plan, the rate-limit gate and the record."""

    __slots__ = ("config", "record", "_clock", "_faults", "_gate", "_counter", "_latency_rng", "_in_flight")

    config: MockConfig
    #: Every request that reached the handler, and what it was answered.
    record: ServedLog

    def __init__(self, config: MockConfig, *, record: ServedLog | None = None, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.record = record if record is not None else ServedLog()
        self._clock = clock
        self._faults = FaultPlan(config.faults, seed=config.seed, after=config.faults_after)
        self._gate = RateLimitGate(config.limits, now=clock())
        self._counter = TokenCounter(config.token_counting, config.token_encoding_name)
        # Its own generator, so the latency drawn never shifts the fault sequence.
        self._latency_rng = random.Random(f"latency-{config.seed}")
        self._in_flight: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"MockApi({self.config!r}, {self.record!r})"

    def warm_up(self) -> None:
        """Load the tokenizer now rather than during the first request, when token counting is needed."""
        if self._gate.counts_tokens:
            sample = {"model": self.config.model, "messages": [{"role": "user", "content": "warm up"}]}
            self._counter.count(Endpoint.CHAT_COMPLETIONS, sample)

    def cancel_in_flight(self) -> None:
        """Cancel every handler still running (hangs, latency sleeps) so the server can stop at once."""
        for task in list(self._in_flight):
            task.cancel()

    # --- HTTP entry points -----------------------------------------------------------------------------

    def openai_handler(self, endpoint: Endpoint) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, endpoint, model=None, api_version=None)

        return handle

    async def azure_handler(self, request: web.Request) -> web.StreamResponse:
        try:
            endpoint = Endpoint(request.match_info["endpoint"].strip("/"))
        except ValueError:
            return _to_response(errors.not_found(request.path))
        deployment = request.match_info["deployment"]
        return await self._serve(request, endpoint, model=deployment, api_version=request.query.get("api-version"))

    async def stats_handler(self, request: web.Request) -> web.StreamResponse:
        return _to_response(json_reply(200, self.record.summary()))

    # --- The request, step by step ---------------------------------------------------------------------

    async def _serve(
        self, request: web.Request, endpoint: Endpoint, *, model: str | None, api_version: str | None
    ) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            arrived_at = self._clock()
            # Drawn on arrival, before any await, so the n-th request to arrive gets the n-th draw.
            fault = self._faults.next()
            raw = await request.read()
            body = _parse_body(raw)
            key = raw_request_key(raw) if body is _NOT_JSON else request_key(body)
            if isinstance(body, Mapping) and isinstance(body.get("model"), str):
                model = body["model"]
            model = model or self.config.model
            if fault is not None:
                return await self._inject(fault, request, endpoint, arrived_at, key, model, api_version)
            decision = self._decide(request, endpoint, body, key, model)
            if decision.reply.status == 200:
                await self._delay(endpoint, arrived_at, key, decision.tokens)
            self.record.append(
                Served(arrived_at, endpoint, decision.reply.status, key, decision.tokens, decision.retry_after)
            )
            return _to_response(decision.reply)
        finally:
            if task is not None:
                self._in_flight.discard(task)

    def _rate_limit_headers(self) -> dict[str, str]:
        """The x-ratelimit-* headers as they stand now; none when playing a gateway that sends none."""
        return self._gate.headers(self._clock()) if self.config.ratelimit_headers else {}

    def _decide(self, request: web.Request, endpoint: Endpoint, body: Any, key: str, model: str) -> _Decision:
        """401, 400, 429 or 200, with the rate-limit headers as they stand after the decision."""
        decision = self._check(request, endpoint, body, key, model)
        reply = decision.reply.with_headers(self._rate_limit_headers())
        return _Decision(reply, decision.tokens, decision.retry_after)

    def _check(self, request: web.Request, endpoint: Endpoint, body: Any, key: str, model: str) -> _Decision:
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
        rejection = self._gate.admit(tokens, self._clock())
        if rejection is not None:
            reply = errors.rate_limited(
                rejection.limit_name,
                model=model,
                limit=rejection.limit,
                used=rejection.used,
                requested=rejection.requested,
                wait=rejection.wait,
                retry_after_header=self.config.retry_after_header,
            )
            return _Decision(reply, retry_after=rejection.wait)
        return _Decision(json_reply(200, success_payload(endpoint, body, model=model, key=key)), tokens)

    def _auth_failure(self, request: web.Request) -> Reply | None:
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
        if self.config.latency_jitter:
            delay += self._latency_rng.uniform(0.0, self.config.latency_jitter)
        if delay <= 0:
            return
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            self.record.append(Served(arrived_at, endpoint, DISCONNECTED, key, tokens))
            raise

    async def _inject(
        self,
        fault: FaultKind,
        request: web.Request,
        endpoint: Endpoint,
        arrived_at: float,
        key: str,
        model: str,
        api_version: str | None,
    ) -> web.StreamResponse:
        """Answer with the fault instead of the API; nothing is charged to the rate limits."""
        if fault is FaultKind.RESET:
            self.record.append(Served(arrived_at, endpoint, RESET, key))
            _reset_connection(request)
            # aiohttp finds the transport gone and drops this response unsent: the reset is the answer.
            return web.Response(status=HTTPStatus.NO_CONTENT)
        if fault is FaultKind.HANG:
            self.record.append(Served(arrived_at, endpoint, HANG, key))
            await asyncio.sleep(HANG_SECONDS)
            return _to_response(errors.server_error())
        reply = self._fault_reply(fault, request, endpoint, model, api_version)
        if reply.content_type == JSON:
            reply = reply.with_headers(self._rate_limit_headers())
        retry_after = float(errors.AZURE_RETRY_AFTER_SECONDS) if fault is FaultKind.AZURE_429 else None
        self.record.append(Served(arrived_at, endpoint, reply.status, key, retry_after=retry_after))
        return _to_response(reply)

    def _fault_reply(
        self, fault: FaultKind, request: web.Request, endpoint: Endpoint, model: str, api_version: str | None
    ) -> Reply:
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
        raise AssertionError(f"fault {fault} has no reply")  # RESET and HANG are handled by the caller


def create_app(api: MockApi) -> web.Application:
    """The aiohttp application serving `api`'s routes.

    Run it with `handler_cancellation=True` (as `MockServer` does), so that a client giving up on a "hang"
    or a slow answer cancels the handler instead of leaving it sleeping for an hour.
    """
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    for endpoint in Endpoint:
        app.router.add_post(f"{OPENAI_PREFIX}/{endpoint.value}", api.openai_handler(endpoint))
    app.router.add_post(AZURE_PREFIX + "/{deployment}/{endpoint:.+}", api.azure_handler)
    app.router.add_get(STATS_PATH, api.stats_handler)
    return app
