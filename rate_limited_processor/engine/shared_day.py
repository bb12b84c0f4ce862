"""The day's spend against `--max_requests_per_day` / `--max_tokens_per_day`, shared through Redis (`--redis_url`):
every process on the same limit key counts into one total per UTC day, so two jobs on one key keep one daily quota.

One Lua script checks both limits and counts the request in one atomic step; the key,
`rlp:{<limit key>}:day:<YYYY-MM-DD>`, expires two days after its last use. The day is the caller's (UTC, from its
wall clock), so processes whose clocks disagree by seconds may count a request near midnight in different days.
"""

from __future__ import annotations

from typing import Any

from ..core.daily_limit import SharedDaySpend

__all__ = ["RedisDaySpend"]

#: A day's key lives this long after its last use: past the day, and any rerun on the next.
DAY_TTL_SECONDS = 2 * 86_400

_SCRIPT = """
local key = KEYS[1]
local max_requests, max_tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
local tokens, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local requests_spent = tonumber(redis.call('HGET', key, 'requests') or '0')
local tokens_spent = tonumber(redis.call('HGET', key, 'tokens') or '0')
if (max_requests >= 0 and requests_spent + 1 > max_requests) or (max_tokens >= 0 and tokens_spent + tokens > max_tokens) then
    return {0, requests_spent, tokens_spent}
end
redis.call('HINCRBY', key, 'requests', 1)
redis.call('HINCRBY', key, 'tokens', tokens)
redis.call('EXPIRE', key, ttl)
return {1, requests_spent + 1, tokens_spent + tokens}
"""


class RedisDaySpend(SharedDaySpend):
    """The day's spend of every process using `limit_key`, in Redis (a client of the `redis` extra)."""

    __slots__ = ("_client", "_script", "limit_key")

    def __init__(self, client: Any, limit_key: str) -> None:
        self._client = client
        self._script = client.register_script(_SCRIPT)
        self.limit_key = limit_key

    def __repr__(self) -> str:
        return f"RedisDaySpend({self.limit_key!r})"

    def key(self, day: str) -> str:
        return f"rlp:{{{self.limit_key}}}:day:{day}"

    async def take(self, day: str, tokens: int, requests_limit: int | None, tokens_limit: int | None) -> tuple[bool, int, int]:
        counted, requests, spent_tokens = await self._script(
            keys=[self.key(day)],
            args=[-1 if requests_limit is None else requests_limit, -1 if tokens_limit is None else tokens_limit, tokens, DAY_TTL_SECONDS],
        )
        return bool(int(counted)), int(requests), int(spent_tokens)
