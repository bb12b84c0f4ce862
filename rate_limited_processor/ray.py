"""A Ray dataset's requests through the processor, on as many workers as the account's limits need (the `ray` extra).

Usage::

    import ray
    from rate_limited_processor import Settings
    from rate_limited_processor.ray import process_dataset

    ds = ray.data.from_items([{"request": {"model": "gpt-4o-mini", "messages": [...]}, "metadata": {"id": 1}}, ...])
    out = process_dataset(ds, Settings(request_url="https://api.openai.com/v1/chat/completions"),
                          redis_url="redis://redis-host:6379/0", concurrency=4)
    out.write_parquet("s3://bucket/answers/")       # rows: request, response (or None), error (or None), metadata

Each input row holds a request body under `request` (a dict, or its JSON text) and optionally `metadata`, which
rides along unsent. Each output row holds `request`, `response` (the API's answer, or None), `error` (why it
failed, or None) and `metadata`: one per input row, in the order of its batch.

Workers. `map_batches` runs a pool of `concurrency` actors; each keeps one `Processor` for its whole life, fed
batch after batch through a queue, so its connections, learned limits and rate control carry over from one batch
to the next. With `concurrency` > 1 the actors share the account's limits through Redis (`shared_limiter.py`,
as `--redis_url` does for processes); without `redis_url` that is refused, since each actor would spend the
whole limit.

The key. `Settings` cannot be pickled (its `Secret` refuses, so a key never lands in a task payload, an object
store or a log). What travels is `PortableSettings`: the settings without the key, and the name of the
environment variable each worker reads it from ($OPENAI_API_KEY, or $ANTHROPIC_API_KEY, by the URL, as the
command does; accounts name theirs with `api_key_env`). Set it on every node, e.g. from your secret store in the
node's start-up. A worker without it refuses to start, naming the variable. (Ray's `runtime_env={"env_vars":
...}` also works, but keeps the key in Ray's control store and shows it in the dashboard.) Extra headers travel
with the settings: put no credential there.

When a worker dies. Ray restarts the actor and runs its batch again on another. With `redis_url`, each answer
is kept in Redis for `result_ttl` seconds (an hour) under a hash of its request and metadata within this job,
the moment it arrives, and a batch run again takes the answers kept there and sends only the rest: an answer
already paid is not paid again, except for the requests that were in flight when the worker died (sent, not
yet answered: they are sent again). Without Redis (concurrency 1), a batch run again is sent again in full.
Failures are not kept: a retried batch tries them again.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import logging
import math
import os
import threading
import uuid
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .base import strict_json
from .base.errors import RunStopped, UsageError
from .base.models import RequestResult
from .config.settings import Account, Settings, key_variable_holding

if TYPE_CHECKING:
    import ray.data

__all__ = ["PortableSettings", "process_dataset", "RESULT_TTL_SECONDS", "DEFAULT_BATCH_SIZE"]

logger = logging.getLogger("rate_limited_processor")

#: Seconds an answer is kept in Redis for a batch run again after its worker died.
RESULT_TTL_SECONDS = 3_600
#: Rows per batch handed to a worker: enough to keep its processor busy across the batch's last answers.
DEFAULT_BATCH_SIZE = 500
#: CPUs each worker asks Ray for: a worker waits on the network and the limits, a quarter of a core is plenty
#: (four workers fit on one core's worth of a cluster's slots).
DEFAULT_NUM_CPUS = 0.25
_CACHE_PREFIX = "rate_limited_processor:answer"


@dataclass(frozen=True, slots=True)
class _PortableAccount:
    name: str
    api_key_env: str | None
    headers: Mapping[str, str]
    limits: Any


@dataclass(frozen=True, slots=True)
class PortableSettings:
    """`Settings` as they travel to the workers: everything but the keys, and where each worker finds them.

    `settings()` on a worker reads the key from `key_variable` (None: send no key) and the accounts' keys from
    their `api_key_env`, and raises ValueError naming the variable when it is not set there.
    """

    #: The settings with no key and no accounts (picklable).
    base: Settings
    key_variable: str | None
    accounts: tuple[_PortableAccount, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, settings: Settings, *, key_variable: str | None = None) -> PortableSettings:
        """The portable form of `settings`. Its key must be one the workers can read from `key_variable` (by
        default the variable the URL's key is read from here): a key given only in code is refused, as it cannot travel."""
        variable = key_variable or key_variable_holding(settings.request_url, os.environ)
        key = settings.key
        if key is not None and os.environ.get(variable, "").strip() != key.reveal():
            raise UsageError(
                f"the API key cannot travel with a Ray task; set it in ${variable} on every worker (and here), "
                "or name the variable that holds it with key_variable"
            )
        accounts = []
        for account in settings.accounts:
            if account.key is not None and account.api_key_env is None:
                raise UsageError(f"account {account.name!r}: give its key as api_key_env (a variable set on every worker), not api_key")
            accounts.append(_PortableAccount(account.name, account.api_key_env, dict(account.headers), account.limits))
        base = replace(settings, api_key=None, accounts=())
        return cls(base, variable if key is not None else None, tuple(accounts))

    def settings(self) -> Settings:
        """The settings, with the keys read from this process's environment."""
        api_key: str | None = None
        if self.key_variable is not None:
            api_key = os.environ.get(self.key_variable)
            if not api_key:
                raise ValueError(f"${self.key_variable} is not set on this Ray worker: it holds the API key (set it on every node)")
        accounts = tuple(Account(a.name, api_key_env=a.api_key_env, headers=a.headers, limits=a.limits) for a in self.accounts)
        return replace(self.base, api_key=api_key, accounts=accounts)


def _answer_key(job: str, request: Any, metadata: Any) -> str:
    digest = hashlib.blake2b(strict_json.canonical([request, metadata]), digest_size=16).hexdigest()
    return f"{_CACHE_PREFIX}:{job}:{digest}"


def _request_of(value: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A row's request body, or why it is none (a JSON text is read as the file reader would)."""
    if isinstance(value, (str, bytes)):
        try:
            value = strict_json.loads(value)
        except strict_json.InvalidJSON as error:
            return None, f"the row's request is not JSON the tool takes: {error.reason}"
    if not isinstance(value, dict):
        return None, f"the row's request must be a JSON object (a dict), got {type(value).__name__}"
    if "metadata" in value:
        return None, "the row's request holds a 'metadata' key; give metadata in the row's own 'metadata' column"
    return value, None


class _Worker:
    """One actor: one `Processor` for its life, on an event loop of its own, fed batch by batch."""

    def __init__(self, portable: PortableSettings, redis_url: str | None, limit_key: str | None, job: str, result_ttl: float) -> None:
        self.settings = portable.settings()
        self.redis_url, self.limit_key, self.job, self.result_ttl = redis_url, limit_key, job, result_ttl
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rate_limited_processor", daemon=True)
        self._thread.start()
        self._call(self._start())
        atexit.register(self.close)  # Ray ends an actor's process without deleting the actor

    def _call(self, coroutine: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result()

    async def _start(self) -> None:
        from .engine.processor import Processor

        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._waiting: dict[int, asyncio.Future[RequestResult]] = {}
        self._sequence = 0
        self._stopped: str | None = None
        self._factory: Any = None
        self._redis: Any = None
        if self.redis_url is not None:
            import redis.asyncio as redis

            from .engine.shared_limiter import RedisLimiterFactory

            self._factory = await RedisLimiterFactory.connect(
                self.redis_url, self.settings.request_url, limit_key=self.limit_key, accounts=max(1, len(self.settings.accounts)),
            )
            self._redis = redis.from_url(self.redis_url)
        self.processor = Processor(self.settings, limiter_factory=self._factory)
        self._run = asyncio.ensure_future(self._serve())

    async def _requests(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            yield await self._queue.get()

    async def _serve(self) -> None:
        """The one run of this actor's processor: results go to the batch waiting for them."""
        try:
            async with self.processor.run(self._requests()) as results:
                async for result in results:
                    waiting = self._waiting.pop(result.metadata["row"], None)
                    if waiting is not None and not waiting.done():
                        waiting.set_result(result)
        except RunStopped as stopped:
            self._stopped = str(stopped)
        except BaseException as error:  # a bug, or the limiter gone: every waiting row says so
            self._stopped = f"{type(error).__name__}: {error}"
            if isinstance(error, asyncio.CancelledError):
                raise
        finally:
            reason = self._stopped or "the run ended"
            for waiting in self._waiting.values():
                if not waiting.done():
                    waiting.set_exception(RunStopped(reason, self.processor.stats))
            self._waiting.clear()

    def close(self) -> None:
        """When the actor's process exits (Ray ends it when the dataset is done): the run ended (nothing is in flight
        between batches), connections closed."""
        loop = getattr(self, "_loop", None)
        if loop is None or loop.is_closed() or not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):  # the process is going away; nothing left to save
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout=5)

    async def _close(self) -> None:
        self.processor.stop("the worker is done")
        await asyncio.wait([self._run], timeout=5)
        for closeable in (self._factory, self._redis):
            if closeable is not None:
                await closeable.aclose()

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        rows = batch.to_pylist() if hasattr(batch, "to_pylist") else _rows_of(batch)
        out: dict[str, list[Any]] = self._call(self._batch(rows))
        return out

    async def _batch(self, rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"request": [], "response": [], "error": [], "metadata": []}
        bodies = [_request_of(row.get("request")) for row in rows]
        metadatas = [row.get("metadata") for row in rows]
        keys = [_answer_key(self.job, body, metadata) if body is not None else None for (body, _), metadata in zip(bodies, metadatas, strict=True)]
        kept = await self._kept([key for key in keys if key is not None])
        pending: list[tuple[int, asyncio.Future[RequestResult]]] = []
        answers: list[Any] = [None] * len(rows)
        for number, ((body, problem), metadata, key) in enumerate(zip(bodies, metadatas, keys, strict=True)):
            if body is None:
                answers[number] = (rows[number].get("request"), None, problem)
            elif key in kept:
                answers[number] = (body, kept[key], None)
            elif self._stopped is not None:
                answers[number] = (body, None, f"not sent: the run stopped: {self._stopped}")
            else:
                self._sequence += 1
                waiting: asyncio.Future[RequestResult] = self._loop.create_future()
                self._waiting[self._sequence] = waiting
                await self._queue.put({**body, "metadata": {"row": self._sequence, "metadata": metadata}})
                pending.append((number, waiting))
        for number, waiting in pending:
            body = bodies[number][0]
            try:
                result = await waiting
            except RunStopped as stopped:
                answers[number] = (body, None, f"not sent: the run stopped: {stopped}")
                continue
            if result.succeeded:
                answers[number] = (body, result.response, None)
                await self._keep(keys[number], result.response)
            else:
                answers[number] = (body, None, result.errors[-1] if result.errors else "failed")
        for row, (_, response, error), metadata in zip(rows, answers, metadatas, strict=True):
            out["request"].append(row.get("request"))  # as given (a dict, or its JSON text): one type per column
            out["response"].append(response)
            out["error"].append(error)
            out["metadata"].append(metadata)
        return out

    async def _kept(self, keys: list[str]) -> dict[str, Any]:
        """Answers an earlier run of these rows paid for (a batch run again after its worker died)."""
        if self._redis is None or not keys or self.result_ttl <= 0:
            return {}
        values = await self._redis.mget(keys)
        return {key: strict_json.loads(value) for key, value in zip(keys, values, strict=True) if value is not None}

    async def _keep(self, key: str | None, response: Any) -> None:
        if self._redis is None or key is None or self.result_ttl <= 0:
            return
        await self._redis.set(key, strict_json.dumps(response), ex=max(1, math.ceil(self.result_ttl)))


def _rows_of(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A dict-of-columns batch (numpy or lists) as rows."""
    columns = {name: list(values) for name, values in batch.items()}
    count = len(next(iter(columns.values()), []))
    return [{name: values[number] for name, values in columns.items()} for number in range(count)]


def process_dataset(
    ds: ray.data.Dataset,
    settings: Settings,
    *,
    redis_url: str | None = None,
    concurrency: int = 1,
    limit_key: str | None = None,
    key_variable: str | None = None,
    batch_size: int | None = DEFAULT_BATCH_SIZE,
    num_cpus: float = DEFAULT_NUM_CPUS,
    result_ttl: float = RESULT_TTL_SECONDS,
    job: str | None = None,
) -> ray.data.Dataset:
    """Every row's `request` sent within the account's limits by `concurrency` Ray actors; one output row each.

    `redis_url` shares the limits between the actors (required when `concurrency` > 1) and keeps each answer for
    `result_ttl` seconds, so a batch run again after a worker died does not pay twice (see the module docstring).
    `limit_key` names the shared buckets as `--limit_key` does; `key_variable` the environment variable the
    workers read the key from. `batch_size` rows go to a worker at a time (None: a block each); each worker asks
    Ray for `num_cpus`. `job` names this job's kept answers (default: new for each call). Lazy, as Ray
    Data is: nothing is sent until the dataset is consumed.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    if concurrency > 1 and redis_url is None:
        raise UsageError(
            f"concurrency={concurrency} needs redis_url: the {concurrency} workers must share the account's limits through Redis, "
            "or each would send at the whole limit"
        )
    if redis_url is not None:
        try:
            import redis.asyncio  # noqa: F401
        except ImportError:
            raise UsageError("redis_url needs the redis package: pip install 'rate_limited_processor[ray]'") from None
    import ray.data

    portable = PortableSettings.of(settings, key_variable=key_variable)
    return ds.map_batches(
        _Worker,
        fn_constructor_args=(portable, redis_url, limit_key, job or uuid.uuid4().hex, result_ttl),
        batch_size=batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency),  # a fixed pool: `concurrency=` is deprecated since Ray 2.51
        num_cpus=num_cpus,
        zero_copy_batch=True,
    )
