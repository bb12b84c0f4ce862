"""The dispatch loop: requests in, one result per request out, as fast as the limiter allows.

Usage::

    settings = Settings(request_url="https://api.openai.com/v1/chat/completions", api_key=key)
    async for result in process_requests(requests, settings):
        print(result.index, result.response or result.errors)

How it works. One feeder task takes a concurrency slot, picks the next job (a retry whose backoff has
passed comes before a new request), waits for the limiter to admit its estimated tokens, and launches
the attempt as a task. Each attempt's outcome is classified once (`retry_policy.classify`): a success or
a final failure becomes a result; a retryable failure goes back on the retry heap with its delay; a
rate-limit 429 also pauses the limiter for everybody; an error that would fail every request (bad key,
no quota) stops the run. Requests are pulled from the input only when they are about to be sent, and
finished results wait in a bounded queue, so memory stays flat however long the input is.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import Settings
from .endpoints import endpoint_from_url, missing_field_reason
from .http_call import auth_headers, new_session, post_json, scrubber_for
from .limiter import InProcessLimiter, RateLimiter
from .models import APIRequest, RejectedLine, RequestResult
from .retry_policy import Verdict, classify
from .status import RunStats
from .token_estimation import EstimationError, TokenEstimator

__all__ = ["Processor", "RunStopped", "process_requests", "RequestSource"]

logger = logging.getLogger("rate_limited_processor")

#: What a run accepts: request bodies (an optional "metadata" key rides along unsent), prepared
#: requests, or lines the reader already rejected; from a plain or an async iterable.
RequestItem = Mapping[str, Any] | APIRequest | RejectedLine
RequestSource = Iterable[RequestItem] | AsyncIterable[RequestItem]

_END: Any = object()


class RunStopped(RuntimeError):
    """Dispatch stopped before every request had a result (see `stats.stop_reason`)."""

    def __init__(self, reason: str, stats: RunStats) -> None:
        super().__init__(reason)
        self.stats = stats


@dataclass(slots=True)
class _Job:
    """A request on its way: how often it was tried and what went wrong each time."""

    request: APIRequest
    name: str
    tokens: int
    attempts: int = 0
    errors: list[str] = field(default_factory=list)

    def result(self, response: dict[str, Any] | None) -> RequestResult:
        return RequestResult(
            index=self.request.index,
            request=self.request.body,
            metadata=self.request.metadata,
            response=response,
            errors=tuple(self.errors),
            attempts=self.attempts,
            estimated_tokens=self.tokens,
        )


class Processor:
    """One run: feed it requests, iterate its results. Read `stats` during or after the run."""

    def __init__(
        self,
        settings: Settings,
        *,
        limiter: RateLimiter | None = None,
        estimator: TokenEstimator | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        #: Raises UnsupportedEndpoint now, before anything is read or sent.
        self.endpoint = endpoint_from_url(settings.request_url)
        self.limiter: RateLimiter = limiter if limiter is not None else InProcessLimiter(settings.limits)
        self.estimator = estimator if estimator is not None else TokenEstimator(settings.token_encoding_name)
        self.stats = RunStats(settings.limits)
        self._session = session
        self._clock = clock
        self._headers = auth_headers(settings)
        self._scrub = scrubber_for(settings)
        self._retry_heap: list[tuple[float, int, _Job]] = []
        self._sequence = itertools.count()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        self._positions = itertools.count(1)
        self._exhausted = False
        self._started = False

    def __repr__(self) -> str:
        return f"Processor({self.settings.request_url!r}, limiter={self.limiter!r})"

    def stop(self, reason: str) -> None:
        """Take no more requests; those in flight finish and are still yielded. The first reason wins."""
        if self.stats.stop_reason is None:
            self.stats.stop_reason = reason
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()

    async def process(self, requests: RequestSource) -> AsyncIterator[RequestResult]:
        """Yield one result per request, in completion order. Raises RunStopped after the last result
        if the run was stopped early (bad key, no quota, or `stop()`)."""
        if self._started:
            raise RuntimeError("a Processor runs once; make a new one for another run")
        self._started = True
        settings = self.settings
        session = self._session if self._session is not None else new_session(settings)
        results: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.max_in_flight)
        slots = asyncio.Semaphore(settings.max_in_flight)
        self.stats.started_at = self._clock()
        self._feeder = asyncio.create_task(self._feed(_aiter(requests), session, slots, results))
        finisher = asyncio.create_task(self._finish(results))
        try:
            while (result := await results.get()) is not _END:
                yield result
            await finisher
        finally:
            pending = [self._feeder, finisher, *self._in_flight]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if self._session is None:
                await session.close()
            self.stats.finished_at = self._clock()
        if self.stats.stop_reason is not None:
            raise RunStopped(self.stats.stop_reason, self.stats)

    # -- the feeder -------------------------------------------------------------------------------

    async def _feed(
        self,
        source: AsyncIterator[RequestItem],
        session: aiohttp.ClientSession,
        slots: asyncio.Semaphore,
        results: asyncio.Queue[Any],
    ) -> None:
        while True:
            await slots.acquire()
            job = await self._next_job(source, results)
            if job is None:
                return
            await self.limiter.acquire(job.tokens)
            task = asyncio.create_task(self._attempt(job, session, slots, results))
            self._in_flight.add(task)

    async def _next_job(self, source: AsyncIterator[RequestItem], results: asyncio.Queue[Any]) -> _Job | None:
        """A retry that is due, else a new request; waits while only future retries remain."""
        while True:
            self._changed.clear()
            now = self._clock()
            if self._retry_heap and self._retry_heap[0][0] <= now:
                return heapq.heappop(self._retry_heap)[2]
            if not self._exhausted:
                item = await anext(source, _END)
                if item is _END:
                    self._exhausted = True
                    continue
                job = self._admit(item)
                if isinstance(job, _Job):
                    return job
                await results.put(job)
                continue
            if not self._retry_heap and not self._in_flight:
                return None
            timeout = self._retry_heap[0][0] - now if self._retry_heap else None
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass

    def _admit(self, item: RequestItem) -> _Job | RequestResult:
        """Validate and estimate a request; a line that cannot be sent becomes its failure result."""
        if isinstance(item, RejectedLine):
            return self._reject(item.index, item.content, None, item.reason)
        request = item if isinstance(item, APIRequest) else _from_mapping(item, next(self._positions))
        name = request_name(request)
        reason = missing_field_reason(self.endpoint, request.body)
        if reason is None:
            try:
                return _Job(request, name, self.estimator.estimate(self.endpoint, request.body))
            except EstimationError as error:
                reason = str(error)
        return self._reject(request.index, request.body, request.metadata, f"{name}: {reason}")

    def _reject(self, index: int, content: Any, metadata: Any, reason: str) -> RequestResult:
        self.stats.invalid += 1
        logger.error("%s (not sent)", reason)
        return RequestResult(index, content, metadata, response=None, errors=(reason,), attempts=0)

    # -- one attempt --------------------------------------------------------------------------------

    async def _attempt(self, job: _Job, session: aiohttp.ClientSession, slots: asyncio.Semaphore, results: asyncio.Queue[Any]) -> None:
        try:
            result = await self._try_once(job, session)
            if result is not None:
                await results.put(result)
        finally:
            slots.release()
            self._in_flight.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._changed.set()

    async def _try_once(self, job: _Job, session: aiohttp.ClientSession) -> RequestResult | None:
        """Send once and act on the outcome; returns the final result, or None if the job goes on."""
        settings = self.settings
        max_attempts = settings.retry.max_attempts
        job.attempts += 1
        self.stats.record_attempt(job.tokens, is_retry=job.attempts > 1)
        logger.info("%s: sending, attempt %d/%d, ~%d tokens", job.name, job.attempts, max_attempts, job.tokens)
        started = self._clock()
        try:
            outcome = await post_json(
                session, settings.request_url, job.request.body,
                headers=self._headers, timeout=settings.request_timeout, scrub=self._scrub,
            )
            decision = classify(outcome)
        except Exception as error:  # a bug of ours must not lose the request silently
            logger.exception("%s: internal error", job.name)
            job.errors.append(self._scrub(f"internal error: {type(error).__name__}: {error}"))
            return self._fail(job)
        latency = self._clock() - started
        reason = self._scrub(decision.reason)

        if decision.verdict is Verdict.SUCCESS:
            logger.info("%s: succeeded on attempt %d in %.2fs", job.name, job.attempts, latency)
            self.stats.succeeded += 1
            self.stats.record_usage(job.tokens, outcome.body)
            return job.result(outcome.body)
        if decision.verdict is Verdict.STOP_RUN:
            self.stats.unfinished += 1
            self.stop(f"{reason} (every remaining request would fail the same way)")
            logger.error("%s: %s; stopping the run", job.name, reason)
            return None

        job.errors.append(reason)
        if decision.rate_limited:
            self.stats.rate_limit_errors += 1
            pause = settings.retry.pause_for(decision)
            if pause is not None:
                logger.warning("%s: rate limited; all sending paused for %.2fs", job.name, pause)
                await self.limiter.pause(pause)
        if decision.verdict is Verdict.RETRY and job.attempts < max_attempts:
            if self.stats.stop_reason is not None:
                self.stats.unfinished += 1
                return None
            delay = settings.retry.retry_delay(decision, job.attempts)
            logger.warning("%s: attempt %d/%d failed: %s; retrying in %.2fs", job.name, job.attempts, max_attempts, reason, delay)
            heapq.heappush(self._retry_heap, (self._clock() + delay, next(self._sequence), job))
            return None
        return self._fail(job)

    def _fail(self, job: _Job) -> RequestResult:
        self.stats.failed += 1
        logger.error("%s: failed after %d attempt(s): %s", job.name, job.attempts, job.errors[-1] if job.errors else "")
        return job.result(None)

    # -- the end ------------------------------------------------------------------------------------

    async def _finish(self, results: asyncio.Queue[Any]) -> None:
        """Once the feeder is done (or stopped), let in-flight attempts finish, then end the stream."""
        assert self._feeder is not None
        await asyncio.wait([self._feeder])
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))
        if self.stats.stop_reason is not None:
            self.stats.unfinished += len(self._retry_heap)
            self._retry_heap.clear()
        await results.put(_END)
        if not self._feeder.cancelled() and self._feeder.exception() is not None:
            raise self._feeder.exception()  # type: ignore[misc]


def request_name(request: APIRequest) -> str:
    """How messages name a request: by its input line when it came from a file."""
    return request.label or f"request {request.index}"


def _from_mapping(item: Mapping[str, Any], position: int) -> APIRequest:
    body = dict(item)
    metadata = body.pop("metadata", None)
    return APIRequest(index=position, body=body, metadata=metadata)


async def _aiter(requests: RequestSource) -> AsyncIterator[RequestItem]:
    if isinstance(requests, AsyncIterable):
        async for item in requests:
            yield item
    else:
        for item in requests:
            yield item


async def process_requests(
    requests: RequestSource,
    settings: Settings,
    *,
    limiter: RateLimiter | None = None,
) -> AsyncIterator[RequestResult]:
    """Send every request within the limits; yield one `RequestResult` per request as each completes."""
    processor = Processor(settings, limiter=limiter)
    async for result in processor.process(requests):
        yield result
