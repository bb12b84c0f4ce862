"""A limiter shared by many processes and machines through Redis (the optional `redis` extra).

Several jobs on one API key, each with its own buckets, would spend the account's limit once each and
drown in 429s. Processes that name the same limit key share one pair of buckets here instead:

    limiter = await RedisLimiter.connect("redis://localhost:6379/0", key, Limits(500, 200_000))
    await limiter.acquire(tokens=1_200)

How it works. All the arithmetic runs in one Lua script inside Redis (loaded once, called by EVALSHA),
so taking from both buckets is one atomic step, and time comes from Redis's own clock (`TIME`): no
client clock enters the math, and machines whose clocks disagree still share fairly. The script either
takes one request and its tokens from both buckets, or answers how long to wait; the client sleeps that
long (plus a little jitter, so N processes do not wake together). It mirrors `limiter.RateBuckets`:
buckets of `burst_seconds` of their rate that start empty, oversize requests that wait for a full
bucket and go into debt, and a pause after a rate-limit 429 that every process honours before its next
send and that resumes paced. Each process declares the limits it wants on every call; the lowest
declaration still alive (refreshed within the last minute) wins, and a process whose limits differ from
another's is warned once. The totals admitted by all processes are kept too, so that learning from the
API's headers compares the server's consumption with the whole group's. Keys expire when idle.

If Redis goes away mid-run, calls raise: the run stops (a rerun resumes) rather than quietly falling
back to unshared limits, which would break the account's limit for everyone else.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..base.errors import LimiterUnavailable
from ..config.settings import Account
from ..core.limiter import Admission, Limits

if TYPE_CHECKING:
    from .shared_day import RedisDaySpend

__all__ = ["RedisLimiter", "RedisLimiterFactory", "SharedLimiterUnavailable", "default_limit_key", "redis_location"]

logger = logging.getLogger("rate_limited_processor")

#: Keys live this long after their last use, so a forgotten key costs nothing.
IDLE_TTL_SECONDS = 600
#: A process's declared limits count while it refreshed them within this many seconds.
DECLARATION_LIFETIME_SECONDS = 60
#: Each wait is stretched by up to this fraction at random, so processes do not wake in lockstep.
WAKE_JITTER = 0.05
#: Seconds a Redis call may take before the limiter is considered gone.
REDIS_TIMEOUT_SECONDS = 5.0

# One script for every operation, so it is loaded once. Unlimited is sent as -1 (Lua has no JSON inf).
_SCRIPT = """
local state_key, limits_key = KEYS[1], KEYS[2]
local op, me = ARGV[1], ARGV[2]
local my_rpm, my_tpm, burst = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local amount, ttl_ms, lifetime = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local my_opm, output, output_burst = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

-- Declare this process's limits, then take the lowest live declaration.
redis.call('HSET', limits_key, me, ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. ARGV[9] .. ' ' .. string.format('%.6f', now))
local rpm, tpm, opm, differs = -1, -1, -1, 0
local entries = redis.call('HGETALL', limits_key)
for i = 1, #entries, 2 do
  local r, k, o, at = string.match(entries[i + 1], '^(%S+) (%S+) (%S+) (%S+)$')
  if at == nil or now - tonumber(at) > lifetime then
    redis.call('HDEL', limits_key, entries[i])
  else
    r, k, o = tonumber(r), tonumber(k), tonumber(o)
    if r ~= my_rpm or k ~= my_tpm or o ~= my_opm then differs = 1 end
    if r >= 0 and (rpm < 0 or r < rpm) then rpm = r end
    if k >= 0 and (tpm < 0 or k < tpm) then tpm = k end
    if o >= 0 and (opm < 0 or o < opm) then opm = o end
  end
end

local s = redis.call('HMGET', state_key, 'rl', 'tl', 'up', 'pu', 'nr', 'nt', 'ol', 'no')
local rl, tl = tonumber(s[1]) or 0, tonumber(s[2]) or 0
local up, pu = tonumber(s[3]) or now, tonumber(s[4]) or 0
local nr, nt = tonumber(s[5]) or 0, tonumber(s[6]) or 0
local ol, no = tonumber(s[7]) or 0, tonumber(s[8]) or 0

local rr, rc, tr, tc, orate, oc = 0, 0, 0, 0, 0, 0
if rpm >= 0 then rr = rpm / 60; rc = math.max(rr * burst, 1) end
if tpm >= 0 then tr = tpm / 60; tc = math.max(tr * burst, 1) end
if opm >= 0 then orate = opm / 60; oc = math.max(orate * output_burst, 1) end

-- Refill up to `at` (buckets emptied for a pause start refilling at its end: `up` may be ahead of now).
local function refill(at)
  if at > up then
    if rpm >= 0 then rl = math.min(rc, rl + (at - up) * rr) end
    if tpm >= 0 then tl = math.min(tc, tl + (at - up) * tr) end
    if opm >= 0 then ol = math.min(oc, ol + (at - up) * orate) end
    up = at
  end
end

local result = {'0', '0', '0', tostring(differs), '0'}
if op == 'acquire' then
  refill(now)
  local wait = math.max(0, pu - now, up - now)
  if rpm >= 0 then wait = math.max(wait, (up - now) + (math.min(1, rc) - rl) / rr) end
  if tpm >= 0 then wait = math.max(wait, (up - now) + (math.min(amount, tc) - tl) / tr) end
  if opm >= 0 then wait = math.max(wait, (up - now) + (math.min(output, oc) - ol) / orate) end
  if wait > 1e-6 then
    result[1] = string.format('%.6f', wait)
  else
    -- An unlimited dimension keeps no level: a debt built there would stall everyone once it got a limit.
    if rpm >= 0 then rl = rl - 1 else rl = 0 end
    if tpm >= 0 then tl = tl - amount else tl = 0 end
    if opm >= 0 then ol = ol - output else ol = 0 end
    nr = nr + 1
    nt = nt + amount
    no = no + output
  end
elseif op == 'pause' then
  local untl = now + amount
  if untl > pu then
    refill(now)
    refill(untl)
    rl = math.min(rl, 0)
    tl = math.min(tl, 0)
    ol = math.min(ol, 0)
    pu = untl
  end
elseif op == 'refused' then
  nr = nr - 1
  nt = nt - amount
  no = no - output
elseif op == 'refund' then
  -- Reserved output tokens an answer did not use go back, up to the bucket's capacity.
  refill(now)
  if opm >= 0 then ol = math.min(oc, ol + output) end
  no = no - output
end
result[2] = tostring(nr)
result[3] = tostring(nt)
result[5] = tostring(no)
redis.call('HSET', state_key, 'rl', rl, 'tl', tl, 'up', string.format('%.6f', up), 'pu', string.format('%.6f', pu), 'nr', nr, 'nt', nt, 'ol', ol, 'no', no)
redis.call('PEXPIRE', state_key, ttl_ms)
redis.call('PEXPIRE', limits_key, ttl_ms)
return result
"""


class SharedLimiterUnavailable(LimiterUnavailable):
    """Redis could not be reached (the message names the server, never its password)."""


def redis_location(url: str) -> str:
    """host:port/db of a Redis URL, without credentials: safe to print."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or ''}"


def default_limit_key(request_url: str, model: str | None, api_key: str | None) -> str:
    """The account a job spends: the API's host, the model, and a hash of the key (never the key itself)."""
    host = urlsplit(request_url).hostname or "localhost"
    key_hash = hashlib.sha256(api_key.encode()).hexdigest()[:12] if api_key else "nokey"
    return f"{host}:{model or 'any-model'}:{key_hash}"


def _per_minute(value: float | None) -> str:
    return "-1" if value is None or math.isinf(value) else repr(float(value))


class RedisLimiter:
    """A `RateLimiter` whose buckets live in Redis, shared by every process using the same key."""

    def __init__(
        self,
        client: Any,
        key: str,
        limits: Limits,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        random_fraction: Callable[[], float] = random.random,
        owns_client: bool = True,
    ) -> None:
        """`owns_client`: `aclose` closes the client too (not when a factory's limiters share one)."""
        import asyncio

        self.key = key
        self._owns_client = owns_client
        self.limits = limits
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self._keys = [f"rlp:{{{key}}}:state", f"rlp:{{{key}}}:limits"]
        self._me = f"{socket.gethostname()}:{os.getpid()}:{random.getrandbits(32):08x}"
        self._sleep = sleep if sleep is not None else asyncio.sleep
        self._random = random_fraction
        self._warned = False

    def __repr__(self) -> str:
        return f"RedisLimiter(key={self.key!r}, {self.limits!r})"

    @classmethod
    async def connect(cls, url: str, key: str, limits: Limits, **kwargs: Any) -> RedisLimiter:
        """Connect and check that Redis answers; SharedLimiterUnavailable if it does not."""
        import redis.asyncio as redis

        try:
            client = redis.from_url(url, socket_timeout=REDIS_TIMEOUT_SECONDS, socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
        except ValueError as error:
            raise SharedLimiterUnavailable(f"not a Redis URL ({error}); expected redis://host:6379/0") from None
        try:
            await client.ping()
        except (redis.RedisError, OSError) as error:
            await client.aclose()
            raise SharedLimiterUnavailable(f"cannot reach Redis at {redis_location(url)}: {type(error).__name__}") from None
        return cls(client, key, limits, **kwargs)

    async def _call(self, op: str, amount: float = 0, output: float = 0) -> tuple[float, Admission]:
        limits = self.limits
        wait, requests, tokens, differs, output_total = await self._script(
            keys=self._keys,
            args=[op, self._me, _per_minute(limits.requests_per_minute), _per_minute(limits.tokens_per_minute),
                  repr(limits.burst_seconds), amount, IDLE_TTL_SECONDS * 1000, DECLARATION_LIFETIME_SECONDS,
                  _per_minute(limits.output_tokens_per_minute), output, repr(limits.output_burst)],
        )
        if int(differs) and not self._warned:
            self._warned = True
            logger.warning("other processes on limit key %r declare different limits; the lowest wins", self.key)
        return float(wait), Admission(int(requests), int(tokens), int(output_total))

    async def acquire(self, tokens: int, output_tokens: int = 0) -> Admission:
        if tokens < 0 or output_tokens < 0:
            raise ValueError(f"tokens must not be negative, got {tokens} and {output_tokens}")
        while True:
            wait, admission = await self._call("acquire", tokens, output_tokens)
            if wait == 0:
                return admission
            await self._sleep(wait * (1 + WAKE_JITTER * self._random()))

    async def pause(self, seconds: float) -> None:
        await self._call("pause", max(0.0, seconds))

    async def refused(self, tokens: int, output_tokens: int = 0) -> None:
        await self._call("refused", tokens, output_tokens)

    async def refund(self, output_tokens: int) -> None:
        await self._call("refund", 0, output_tokens)

    async def set_limits(self, limits: Limits) -> None:
        self.limits = limits
        await self._call("declare")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


class RedisLimiterFactory:
    """Makes a run's per-lane limiters on one Redis connection: a key for each (account, model), as
    `default_limit_key` names it, so every process on the same account and model shares its buckets.

    Usage::

        factory = await RedisLimiterFactory.connect("redis://localhost:6379/0", request_url)
        processor = Processor(settings, limiter_factory=factory)
        ...
        await factory.aclose()

    `limit_key` instead gives each account one key (`<limit_key>:<account>`, or `limit_key` alone for a
    run with one account), across its models: for a proxy that limits the key as a whole.
    """

    def __init__(self, client: Any, request_url: str, *, limit_key: str | None = None, accounts: int = 1, **kwargs: Any) -> None:
        self._client = client
        self._request_url = request_url
        self._limit_key = limit_key
        self._accounts = accounts
        self._kwargs = kwargs
        self.keys: list[str] = []

    def __repr__(self) -> str:
        return f"RedisLimiterFactory(keys={self.keys!r})"

    @classmethod
    async def connect(cls, url: str, request_url: str, **kwargs: Any) -> RedisLimiterFactory:
        """Connect and check that Redis answers; SharedLimiterUnavailable if it does not."""
        probe = await RedisLimiter.connect(url, "connect-check", Limits(None, None))
        return cls(probe._client, request_url, **kwargs)

    def key_for(self, account: Account, model: str) -> str:
        if self._limit_key is not None:
            return self._limit_key if self._accounts <= 1 else f"{self._limit_key}:{account.name}"
        key = account.key.reveal() if account.key is not None else None
        return default_limit_key(self._request_url, model or None, key)

    def __call__(self, account: Account, model: str, limits: Limits) -> RedisLimiter:
        key = self.key_for(account, model)
        self.keys.append(key)
        return RedisLimiter(self._client, key, limits, owns_client=False, **self._kwargs)

    def day_spend(self, api_key: str | None) -> RedisDaySpend:
        """The per-day limits' count, one per run's key: `--limit_key`, else the API's host and a hash of `api_key`
        (across models: a daily quota is the key's, not a model's)."""
        from .shared_day import RedisDaySpend

        return RedisDaySpend(self._client, self._limit_key or default_limit_key(self._request_url, None, api_key))

    async def aclose(self) -> None:
        await self._client.aclose()
