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

Stopping. `stop()` takes no more requests and lets those in flight finish; `abort()` also abandons
those in flight. Either way, a request without a final result is not yielded (a rerun sends it), and
`process()` raises `RunStopped` after the last result.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import logging
import math
import time
import traceback
from collections import OrderedDict
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .config import Settings
from .endpoints import Endpoint, UnsupportedEndpoint, endpoint_from_url, missing_field_reason, resolve_url
from .http_call import auth_headers, new_session, post_json, scrubber_for
from .learned_limits import LimitTuner, SendMark, parse_rate_limit_headers
from .limiter import InProcessLimiter, Limits, RateLimiter
from .models import APIRequest, RejectedLine, RequestResult
from .retry_policy import Decision, HTTPOutcome, Verdict, classify
from .status import RunStats
from .token_estimation import EstimationError, TokenEstimator

__all__ = ["InvalidRequest", "Processor", "RunStopped", "check_request", "process_requests", "RequestItem", "RequestSource", "request_name"]

logger = logging.getLogger("rate_limited_processor")

#: What a run accepts: request bodies (an optional "metadata" key rides along unsent), prepared
#: requests, or lines the reader already rejected; from a plain or an async iterable.
RequestItem = Mapping[str, Any] | APIRequest | RejectedLine
RequestSource = Iterable[RequestItem] | AsyncIterable[RequestItem]

_END: Any = object()
_PENDING: Any = object()


class RunStopped(RuntimeError):
    """Dispatch stopped before every request had a result (see `stats.stop_reason`)."""

    def __init__(self, reason: str, stats: RunStats) -> None:
        super().__init__(reason)
        self.stats = stats


@dataclass(slots=True)
class _Job:
    """A request on its way: where it goes, how often it was tried and what went wrong each time."""

    request: APIRequest
    name: str
    url: str
    tokens: int
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    #: When the current attempt was sent, and what we had sent by then: for learning the server's view.
    mark: SendMark | None = None
    position: int = -1

    def result(self, outcome: HTTPOutcome | None, *, succeeded: bool) -> RequestResult:
        return RequestResult(
            index=self.request.index,
            request=self.request.body,
            metadata=self.request.metadata,
            response=outcome.body if succeeded and outcome is not None else None,
            errors=tuple(self.errors),
            attempts=self.attempts,
            estimated_tokens=self.tokens,
            custom_id=self.request.custom_id,
            status=outcome.status if outcome is not None else None,
            request_id=outcome.headers.get("x-request-id") if outcome is not None else None,
            error_body=outcome.body if not succeeded and outcome is not None else None,
            position=self.position,
        )


class _Lookahead:
    """The next input item, fetched without blocking the feeder.

    A plain iterable is read directly. An async one is read in a task, so a slow source (a pipeline
    waiting on its own consumer) never holds up retries that are due. At most one item is read ahead.
    """

    __slots__ = ("_iterator", "_async_iterator", "_fetch", "exhausted")

    def __init__(self, requests: RequestSource) -> None:
        self._iterator: Iterator[RequestItem] | None = None
        self._async_iterator: AsyncIterator[RequestItem] | None = None
        if isinstance(requests, AsyncIterable):
            self._async_iterator = aiter(requests)
        else:
            self._iterator = iter(requests)
        self._fetch: asyncio.Future[Any] | None = None
        self.exhausted = False

    @property
    def fetching(self) -> asyncio.Future[Any] | None:
        """The read in progress, to wait on; None when nothing is being read."""
        return self._fetch

    def poll(self) -> Any:
        """The next item, `_PENDING` while an async read is in progress, or `_END`."""
        if self._iterator is not None:
            item = next(self._iterator, _END)
        else:
            if self._fetch is None:
                assert self._async_iterator is not None
                self._fetch = asyncio.ensure_future(anext(self._async_iterator, _END))
            if not self._fetch.done():
                return _PENDING
            fetch, self._fetch = self._fetch, None
            item = fetch.result()
        if item is _END:
            self.exhausted = True
        return item

    async def aclose(self) -> None:
        """Close the source (the input file, the user's generator) when the run ends, however it ends."""
        if self._fetch is not None:
            self._fetch.cancel()
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()
        aclose = getattr(self._async_iterator, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except RuntimeError:  # still running inside the cancelled fetch: it is being closed already
                pass


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
        max_ahead: int | None = None,
    ) -> None:
        """`max_ahead` bounds how far past the oldest unfinished request the run may read, for a consumer
        that restores input order: it then buffers at most `max_ahead` results."""
        if max_ahead is not None and max_ahead < 1:
            raise ValueError(f"max_ahead must be at least 1, got {max_ahead}")
        self.settings = settings
        self.max_ahead = max_ahead
        #: The run's endpoint. None when `request_url` is only an API root ("https://api.openai.com/v1"),
        #: for Batch input whose lines name their own; then lines without a url are rejected.
        self.endpoint = _endpoint_or_none(settings.request_url)
        #: Learns the limits from the API's answers; the limiter is kept at what it asks for.
        self.tuner = LimitTuner(settings.limits, headroom=settings.headroom, now=clock())
        self._applied_limits = self.tuner.limits()
        self.limiter: RateLimiter = limiter if limiter is not None else InProcessLimiter(self._applied_limits, clock=clock)
        self.estimator = estimator if estimator is not None else TokenEstimator(settings.token_encoding_name)
        self.stats = RunStats(self.tuner.server_limits(), started_at=clock())
        self._session = session
        self._clock = clock
        self._headers = auth_headers(settings)
        self._scrub = scrubber_for(settings)
        self._retry_heap: list[tuple[float, int, _Job]] = []
        self._sequence = itertools.count()
        self._in_flight: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        self._positions = itertools.count(1)  # 1-based index of plain dicts, for messages
        self._next_position = 0  # 0-based place of each item read, for ordering
        self._open: OrderedDict[int, None] = OrderedDict()  # positions read but not yet taken by the consumer
        self._failure: BaseException | None = None
        self._started = False

    def __repr__(self) -> str:
        return f"Processor({self.settings.request_url!r}, limiter={self.limiter!r})"

    def stop(self, reason: str = "stopped") -> None:
        """Take no more requests; those in flight finish and are still yielded. The first reason wins."""
        if self.stats.stop_reason is None:
            self.stats.stop_reason = reason
        if self._feeder is not None and not self._feeder.done() and self._feeder is not asyncio.current_task():
            self._feeder.cancel()

    def abort(self, reason: str = "aborted") -> None:
        """Stop at once: requests in flight are abandoned too (a rerun sends them again)."""
        self.stop(reason)
        for task in list(self._in_flight):
            task.cancel()

    async def process(self, requests: RequestSource) -> AsyncIterator[RequestResult]:
        """Yield one result per request, in completion order.

        Raises RunStopped after the last result if the run was stopped early (bad key, no quota,
        `stop()`, a failing source or limiter). A result counts in `stats` once the consumer has taken
        it and asks for the next, so a result the consumer could not store is not reported as done.
        Close the generator (`contextlib.aclosing`) if you stop iterating early, or the run goes on.
        """
        if self._started:
            raise RuntimeError("a Processor runs once; make a new one for another run")
        self._started = True
        settings = self.settings
        session = self._session if self._session is not None else new_session(settings)
        results: asyncio.Queue[Any] = asyncio.Queue(maxsize=settings.max_in_flight)
        slots = asyncio.Semaphore(settings.max_in_flight)
        self.stats.started_at = self._clock()
        self._feeder = asyncio.create_task(self._feed(_Lookahead(requests), session, slots, results))
        if self.stats.stop_reason is not None:  # stopped before it started
            self._feeder.cancel()
        finisher = asyncio.create_task(self._finish(results))
        taken: RequestResult | None = None  # yielded, but the consumer has not come back for more yet
        try:
            while (taken := await results.get()) is not _END:
                yield taken
                self.stats.record_result(taken)
                self._open.pop(taken.position, None)
                self._changed.set()
            taken = None
        finally:
            if taken is not None:  # the consumer stopped (say, it could not write this one): not done
                self.stats.unfinished += 1
            pending = [self._feeder, finisher, *self._in_flight]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            while not results.empty():  # finished, but never taken by the consumer: not done
                self.stats.unfinished += results.get_nowait() is not _END
            if self._session is None:
                await session.close()
            self.stats.finished_at = self._clock()
        if self.stats.stop_reason is not None:
            raise RunStopped(self.stats.stop_reason, self.stats) from self._failure

    # -- the feeder -------------------------------------------------------------------------------

    async def _feed(self, source: _Lookahead, session: aiohttp.ClientSession, slots: asyncio.Semaphore, results: asyncio.Queue[Any]) -> None:
        job: _Job | None = None  # a job taken but not yet launched: if the run stops, it is unfinished
        try:
            try:
                await self.limiter.set_limits(self._applied_limits)
            except Exception as error:
                self._limiter_failed(error)
                return
            while True:
                await slots.acquire()
                while self.tuner.awaiting_first_answer and self._in_flight:  # the first request goes alone
                    self._changed.clear()
                    await self._wait_for_change(None, None)
                try:
                    job = await self._next_job(source, results)
                except Exception as error:
                    self._fail_run(f"reading the requests failed: {type(error).__name__}: {error}", error)
                    return
                if job is None:
                    return
                try:
                    admitted = await self.limiter.acquire(job.tokens)
                except Exception as error:
                    self._limiter_failed(error)
                    return
                job.mark = SendMark(self._clock(), admitted.requests, admitted.tokens)
                task = asyncio.create_task(self._attempt(job, session, slots, results))
                self._in_flight.add(task)
                job = None
        finally:
            if job is not None:
                self.stats.unfinished += 1
            await source.aclose()

    async def _next_job(self, source: _Lookahead, results: asyncio.Queue[Any]) -> _Job | None:
        """A retry that is due, else a new request; waits while only future retries remain."""
        while True:
            self._changed.clear()
            now = self._clock()
            if self._retry_heap and self._retry_heap[0][0] <= now:
                return heapq.heappop(self._retry_heap)[2]
            # New requests wait while many retries are pending (a server failing everything), so memory
            # stays bounded: at most max_in_flight jobs in flight and as many awaiting a retry.
            if not source.exhausted and len(self._retry_heap) < self.settings.max_in_flight and self._may_read_ahead():
                item = source.poll()
                if item is _END:
                    continue
                if item is not _PENDING:
                    admitted = self._admit(item)
                    if isinstance(admitted, _Job):
                        return admitted
                    await results.put(admitted)
                    continue
            elif source.exhausted and not self._retry_heap and not self._in_flight:
                return None
            timeout = self._retry_heap[0][0] - now if self._retry_heap else None
            await self._wait_for_change(timeout, source.fetching)

    def _may_read_ahead(self) -> bool:
        """With `max_ahead`, the next item may be read only that far past the oldest one not yet taken."""
        if self.max_ahead is None or not self._open:
            return True
        return self._next_position - next(iter(self._open)) < self.max_ahead

    async def _wait_for_change(self, timeout: float | None, fetching: asyncio.Future[Any] | None) -> None:
        """Until an attempt finishes, the next input item arrives, or `timeout` passes."""
        changed = asyncio.ensure_future(self._changed.wait())
        waiters: list[asyncio.Future[Any]] = [changed] if fetching is None else [changed, fetching]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()

    def _admit(self, item: RequestItem) -> _Job | RequestResult:
        """Validate and estimate a request; a line that cannot be sent becomes its failure result."""
        position = self._next_position
        self._next_position += 1
        self._open[position] = None
        if isinstance(item, RejectedLine):
            metadata = {"custom_id": item.custom_id} if item.custom_id is not None else None
            return self._reject(item.index, item.content, metadata, item.reason, item.custom_id, position)
        request = item if isinstance(item, APIRequest) else _from_mapping(item, next(self._positions))
        name = request_name(request)
        try:
            url, _, tokens = check_request(request, self.settings.request_url, self.estimator)
        except InvalidRequest as error:
            return self._reject(request.index, request.body, request.metadata, f"{name}: {error}", request.custom_id, position)
        return _Job(request, name, url, tokens, position=position)

    def _reject(self, index: int, content: Any, metadata: Any, reason: str, custom_id: str | None, position: int) -> RequestResult:
        logger.error("%s (not sent)", reason)
        return RequestResult(index, content, metadata, response=None, errors=(reason,), attempts=0, custom_id=custom_id, position=position)

    def _limiter_failed(self, error: Exception) -> None:
        """The limiter (say, a shared one whose Redis went away) failed: stop rather than send unlimited."""
        self._fail_run(f"the rate limiter failed: {type(error).__name__}: {error}", error)

    def _fail_run(self, reason: str, error: BaseException) -> None:
        """Something every request depends on failed: stop, and say why (the cause goes with RunStopped)."""
        logger.error("%s; stopping the run", self._scrub(reason))
        self._failure = error
        self.stop(self._scrub(reason))

    # -- one attempt --------------------------------------------------------------------------------

    async def _attempt(self, job: _Job, session: aiohttp.ClientSession, slots: asyncio.Semaphore, results: asyncio.Queue[Any]) -> None:
        try:
            try:
                result = await self._try_once(job, session)
            except asyncio.CancelledError:  # aborted: a rerun sends it again
                self.stats.unfinished += 1
                raise
            except Exception as error:  # a bug of ours must not lose the request silently
                result = self._internal_error(job, error)
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
        outcome = await post_json(
            session, job.url, job.request.body,
            headers=self._headers, timeout=settings.request_timeout, scrub=self._scrub,
        )
        decision = classify(outcome)
        reason = self._scrub(decision.reason)
        if not await self._learn(job, outcome, decision) and decision.verdict is not Verdict.SUCCESS:
            self.stats.unfinished += 1  # the limiter failed and the run stops; a success is still kept
            return None

        if decision.verdict is Verdict.SUCCESS:
            logger.info("%s: succeeded on attempt %d in %.2fs", job.name, job.attempts, self._clock() - started)
            return job.result(outcome, succeeded=True)
        if decision.verdict is Verdict.STOP_RUN:
            return self._unfinished(job, f"{reason} (every remaining request would fail the same way)")
        if decision.rate_limited:
            self.stats.rate_limit_errors += 1
        if settings.retry.waits_too_long(decision):
            return self._unfinished(job, f"{reason} (the API asks to wait longer than {settings.retry.max_server_wait:g}s; rerun later)")
        job.errors.append(reason)
        if decision.rate_limited and not await self._pause_everyone(job, decision):
            return None
        if decision.verdict is Verdict.RETRY and job.attempts < max_attempts:
            if self.stats.stop_reason is not None:
                self.stats.unfinished += 1
                return None
            delay = settings.retry.retry_delay(decision, job.attempts)
            logger.warning("%s: attempt %d/%d failed: %s; retrying in %.2fs", job.name, job.attempts, max_attempts, reason, delay)
            heapq.heappush(self._retry_heap, (self._clock() + delay, next(self._sequence), job))
            return None
        logger.error("%s: failed after %d attempt(s): %s", job.name, job.attempts, reason)
        return job.result(outcome, succeeded=False)

    async def _learn(self, job: _Job, outcome: HTTPOutcome, decision: Decision) -> bool:
        """Let the tuner learn from this answer, and move the limiter to what it asks. False if the limiter failed."""
        now = self._clock()
        report = parse_rate_limit_headers(outcome.headers)
        mark = job.mark
        try:
            if decision.verdict is not Verdict.SUCCESS and mark is not None:
                # The server charges only what it admits: a refused request is not part of what was spent.
                await self.limiter.refused(job.tokens)
                mark = SendMark(mark.sent_at, mark.requests - 1, mark.tokens - job.tokens)
            if mark is not None:
                from_the_api = outcome.status is not None and outcome.status < 500
                self.tuner.observe(mark, report, now, from_the_api=from_the_api)
            if decision.rate_limited:
                self.tuner.rate_limited(report, now)
            limits = self.tuner.limits()
            if not _close(limits, self._applied_limits):
                self._applied_limits = limits
                self.stats.limits = self.tuner.server_limits()
                self.stats.server_token_ratio = self.tuner.tokens.ratio
                logger.debug("sending at %s (server-side ratios %.2f requests, %.2f tokens)", limits, self.tuner.requests.ratio, self.tuner.tokens.ratio)
                await self.limiter.set_limits(limits)
        except Exception as error:
            self._limiter_failed(error)
            return False
        return True

    async def _pause_everyone(self, job: _Job, decision: Decision) -> bool:
        """After a rate-limit 429, nobody sends until the server's hint has passed. False if the limiter failed."""
        pause = self.settings.retry.pause_for(decision)
        if pause is None:
            return True
        logger.warning("%s: rate limited; all sending paused for %.2fs", job.name, pause)
        try:
            await self.limiter.pause(pause)
        except Exception as error:
            self.stats.unfinished += 1
            self._limiter_failed(error)
            return False
        return True

    def _unfinished(self, job: _Job, reason: str) -> None:
        """This request cannot finish now, and neither can the rest: stop, leaving it for a rerun."""
        logger.error("%s: %s; stopping the run", job.name, reason)
        self.stats.unfinished += 1
        self.stop(reason)
        return None

    def _internal_error(self, job: _Job, error: Exception) -> RequestResult:
        details = self._scrub("".join(traceback.format_exception(error)))
        logger.error("%s: internal error (a bug; please report it):\n%s", job.name, details)
        job.errors.append(self._scrub(f"internal error: {type(error).__name__}: {error}"))
        return job.result(None, succeeded=False)

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


def _close(a: Limits, b: Limits, tolerance: float = 0.01) -> bool:
    """Limits within 1% of each other: not worth rebuilding the buckets for. (Unlimited is close only to itself.)"""
    pairs = ((a.requests_per_minute, b.requests_per_minute), (a.tokens_per_minute, b.tokens_per_minute))
    return all(x == y or (x is not None and y is not None and math.isfinite(x) and math.isfinite(y) and abs(x - y) <= tolerance * max(x, y)) for x, y in pairs)


class InvalidRequest(ValueError):
    """A request that must not be sent: the reason says why (no endpoint, a missing field, an unreadable shape)."""


def check_request(request: APIRequest, request_url: str, estimator: TokenEstimator) -> tuple[str, Endpoint, int]:
    """Where a request goes, its endpoint and its estimated token cost; or InvalidRequest saying why not."""
    try:
        url = resolve_url(request_url, request.url)
        endpoint = _endpoint(url)
        reason = missing_field_reason(endpoint, request.body)
        if reason is None:
            return url, endpoint, estimator.estimate(endpoint, request.body)
    except ValueError as error:  # a malformed or foreign url, an endpoint we cannot estimate, an unreadable body
        reason = str(error)
    raise InvalidRequest(reason)


@functools.lru_cache(maxsize=64)
def _endpoint(url: str) -> Endpoint:
    return endpoint_from_url(url)


def _endpoint_or_none(url: str) -> Endpoint | None:
    try:
        return _endpoint(url)
    except UnsupportedEndpoint:
        return None


def request_name(request: APIRequest) -> str:
    """How messages name a request: by its input line when it came from a file."""
    return request.label or f"request {request.index}"


def _from_mapping(item: Mapping[str, Any], position: int) -> APIRequest:
    body = dict(item)
    metadata = body.pop("metadata", None)
    return APIRequest(index=position, body=body, metadata=metadata)


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
