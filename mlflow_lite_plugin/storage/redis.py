"""Storage in Redis, shared by every process and host that points at it.

Key names (a format: servers written by earlier versions keep working), after the storage's
``prefix``:

- key-value: ``<key>`` holds the JSON entry; Redis expires it (``PX``);
- ledger: per bucket ``<scope>|<period>:spent`` (a float string), ``:res`` (hash: reservation id
  -> amount), ``:rests`` (sorted set: reservation id scored by when its lease was last renewed,
  in Redis server time) and ``:alert:<threshold>``; per ledger ``changes``, a counter every
  settle bumps, which waiting calls poll. The budget's prefix holds a ``{hash tag}``, so the
  scripts also run on Redis Cluster;
- schedule: ``<name>:next`` and ``<name>:free`` (float strings, Redis server time);
- locks are named in full by their user (single flight: ``mlflow_lite:flight:<key>``).

Every operation is written once, as a generator of Redis commands (sans I/O): :meth:`RedisStorage.run`
sends them with redis-py's client, :meth:`RedisStorage.arun` with ``redis.asyncio`` (one client per
event loop, as its connections belong to the loop that opened them). Scripts go by EVALSHA,
EVAL once the server does not know them.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from mlflow_lite_plugin.core.errors import ArgumentError
from mlflow_lite_plugin.storage.base import Storage, adrive, drive
from mlflow_lite_plugin.storage.breaker import BreakerSettings

_T = TypeVar("_T")

#: Seconds a ledger key lives after its last write: longer than any budget period.
LEDGER_KEY_TTL = 100 * 24 * 3600


@dataclass(frozen=True)
class Script:
    """A Lua script, sent by its SHA1 once the server has it."""

    text: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.text.encode()).hexdigest()


@dataclass(frozen=True)
class Eval:
    script: Script
    keys: Sequence[str]
    args: Sequence[Any]

    def by_sha(self) -> tuple[Any, ...]:
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)

    def by_text(self) -> tuple[Any, ...]:
        return ("EVAL", self.script.text, len(self.keys), *self.keys, *self.args)


Steps = Generator[Any, Any, _T]  # yields commands (a tuple, or an Eval), receives their replies


def client_options(socket_timeout: float | None) -> dict[str, Any]:
    """redis-py keywords: ``socket_timeout`` for every command and for connecting (None: wait
    as long as it takes). Options in a URL (``?socket_timeout=2``) override them in redis-py."""
    if socket_timeout is not None and (
        not isinstance(socket_timeout, (int, float)) or isinstance(socket_timeout, bool) or not socket_timeout > 0
    ):
        raise ArgumentError("socket_timeout", f"must be a positive number of seconds, got {socket_timeout!r}")
    return {"socket_timeout": socket_timeout, "socket_connect_timeout": socket_timeout}


class RedisStorage(Storage):
    """Redis at ``url``. ``prefix`` starts this storage's key names; ``socket_timeout``: seconds
    a command may take (None: redis-py's default, no limit); ``breaker``: skip Redis while it
    keeps failing (None: always try). Pings at once: an unreachable Redis fails here, not on
    the first call."""

    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "mlflow_lite:",
        socket_timeout: float | None = None,
        breaker: BreakerSettings | None = None,
    ):
        try:
            import redis
        except ImportError as exc:
            raise ArgumentError(
                "backend", "backend='redis' needs the redis package: pip install 'mlflow-lite-plugin[redis]'"
            ) from exc
        self.url = url
        self.prefix = prefix
        self._options = client_options(socket_timeout)
        self._redis = redis.Redis.from_url(url, **self._options)
        super().__init__((redis.ConnectionError, redis.TimeoutError, OSError), breaker)
        self._no_script = redis.exceptions.NoScriptError
        self._aclients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()
        self._aclients_lock = threading.Lock()
        self.call(self._redis.ping)

    def __repr__(self) -> str:
        return f"RedisStorage({self.url!r})"

    @property
    def identity(self) -> tuple[str, ...]:
        """The same for every storage of this process on the same server and prefix."""
        return ("redis", self.url, self.prefix)

    # -- the two drivers --

    def run(self, op: Callable[..., Steps[_T]], *args: Any) -> _T:
        """Run the operation ``op(*args)`` (a generator of commands) with the sync client."""
        return self.call(self._drive, op(*args))

    async def arun(self, op: Callable[..., Steps[_T]], *args: Any) -> _T:
        """:meth:`run` with this event loop's ``redis.asyncio`` client."""
        return await self.acall(self._adrive, op(*args))

    def _drive(self, steps: Steps[_T]) -> _T:
        return drive(steps, self._execute)

    async def _adrive(self, steps: Steps[_T]) -> _T:
        return await adrive(steps, functools.partial(self._aexecute, self._aclient()))

    def _execute(self, command: tuple[Any, ...] | Eval) -> Any:
        if not isinstance(command, Eval):
            return self._redis.execute_command(*command)
        try:
            return self._redis.execute_command(*command.by_sha())
        except self._no_script:
            return self._redis.execute_command(*command.by_text())

    async def _aexecute(self, client: Any, command: tuple[Any, ...] | Eval) -> Any:
        if not isinstance(command, Eval):
            return await client.execute_command(*command)
        try:
            return await client.execute_command(*command.by_sha())
        except self._no_script:
            return await client.execute_command(*command.by_text())

    def _aclient(self) -> Any:
        loop = asyncio.get_running_loop()
        with self._aclients_lock:
            client = self._aclients.get(loop)
            if client is None:
                import redis.asyncio  # only where asyncio uses Redis

                client = self._aclients[loop] = redis.asyncio.Redis.from_url(self.url, **self._options)
            return client

    def close(self) -> None:
        self._redis.close()

    # -- key-value (exact cache) --

    def _get(self, key: str) -> Steps[dict[str, Any] | None]:
        blob = yield ("GET", self.prefix + key)
        return None if blob is None else json.loads(blob)

    def _set(self, key: str, value: dict[str, Any], ttl: float | None) -> Steps[None]:
        expires = () if ttl is None else ("PX", max(1, int(ttl * 1000)))
        yield ("SET", self.prefix + key, json.dumps(value), *expires)

    def _keys(self) -> Steps[list[bytes]]:
        cursor, keys = 0, []
        while True:
            cursor, batch = yield ("SCAN", cursor, "MATCH", self.prefix + "*", "COUNT", 500)
            keys.extend(batch)
            if int(cursor) == 0:
                return keys

    def _clear(self) -> Steps[None]:
        keys = yield from self._keys()
        for start in range(0, len(keys), 500):
            yield ("DEL", *keys[start : start + 500])

    def _count(self) -> Steps[int]:
        return len((yield from self._keys()))

    # -- ledger (budget): the operations of storage/sqlite.py's ledger, as Lua scripts --

    def _bucket_keys(self, scope: str, period: str) -> list[str]:
        base = f"{self.prefix}{scope}|{period}"
        return [f"{base}:spent", f"{base}:res", f"{base}:rests"]

    def _ledger_reserve(
        self, buckets: Sequence[tuple[str, str, float]], reservation_id: str, amount: float, ttl: float
    ) -> Steps[tuple[int, float, float, Any] | None]:
        keys = [key for scope, period, _ in buckets for key in self._bucket_keys(scope, period)] + [
            self.prefix + "changes"
        ]
        args = [reservation_id, repr(amount), repr(float(ttl)), len(buckets), LEDGER_KEY_TTL]
        result = yield Eval(_RESERVE, keys, args + [repr(float(limit)) for _, _, limit in buckets])
        if int(result[0]) == 1:
            return None
        return int(result[1]) - 1, float(result[2]), float(result[3]), int(result[4])

    def _ledger_settle(
        self, reservation_id: str, buckets: Sequence[tuple[str, str]], actual: float
    ) -> Steps[list[float]]:
        keys = [key for scope, period in buckets for key in self._bucket_keys(scope, period)] + [
            self.prefix + "changes"
        ]
        totals = yield Eval(_SETTLE, keys, [reservation_id, repr(actual), LEDGER_KEY_TTL])
        return [float(total) for total in totals]

    def _ledger_renew(self, reservation_ids: Sequence[str], buckets: Sequence[tuple[str, str]]) -> Steps[None]:
        keys = sorted({self._bucket_keys(scope, period)[2] for scope, period in buckets})
        yield Eval(_RENEW, keys, list(reservation_ids))

    def _ledger_bucket(self, scope: str, period: str, ttl: float) -> Steps[tuple[float, float]]:
        spent, reserved = yield Eval(_BUCKET, self._bucket_keys(scope, period), [repr(float(ttl))])
        return float(spent), float(reserved)

    def _ledger_version(self) -> Steps[int]:
        return int((yield ("GET", self.prefix + "changes")) or 0)

    def _ledger_mark(self, scope: str, period: str, threshold: float) -> Steps[bool]:
        key = f"{self.prefix}{scope}|{period}:alert:{float(threshold)!r}"
        return bool((yield ("SET", key, str(time.time()), "NX", "EX", LEDGER_KEY_TTL)))

    # -- schedule (rate limit): storage/memory.py's schedule, in Redis server time --

    def _schedule_reserve(
        self, names: Sequence[str], seconds: Sequence[float], max_wait: float | None
    ) -> Steps[tuple[bool, float]]:
        keys = [f"{self.prefix}{name}:next" for name in names]
        ok, wait = yield Eval(_SCHEDULE_RESERVE, keys, [-1 if max_wait is None else max_wait, *seconds])
        return bool(int(ok)), float(wait)

    def _schedule_start(self, names: Sequence[str], seconds: Sequence[float]) -> Steps[float]:
        keys = [f"{self.prefix}{name}:free" for name in names] + [f"{self.prefix}{name}:next" for name in names]
        return float((yield Eval(_SCHEDULE_START, keys, list(seconds))))

    # -- locks (single flight): ``name`` in full, held by ``token`` for ``ttl`` seconds --

    def _lock_acquire(self, name: str, token: str, ttl: float) -> Steps[bool]:
        return bool((yield ("SET", name, token, "NX", "PX", max(1, int(ttl * 1000)))))

    def _lock_release(self, name: str, token: str) -> Steps[bool]:
        return bool((yield Eval(_RELEASE, [name], [token])))

    def _lock_held(self, name: str) -> Steps[bool]:
        return bool((yield ("EXISTS", name)))

    # -- the public operations and their async twins (boilerplate of one shape) --

    def get(self, key: str) -> dict[str, Any] | None:
        return self.run(self._get, key)

    async def aget(self, key: str) -> dict[str, Any] | None:
        return await self.arun(self._get, key)

    def set(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        self.run(self._set, key, value, ttl)

    async def aset(self, key: str, value: dict[str, Any], ttl: float | None) -> None:
        await self.arun(self._set, key, value, ttl)

    def clear(self) -> None:
        self.run(self._clear)

    async def aclear(self) -> None:
        await self.arun(self._clear)

    def count(self) -> int:
        return self.run(self._count)

    async def acount(self) -> int:
        return await self.arun(self._count)

    def ledger_reserve(
        self, buckets: Sequence[tuple[str, str, float]], reservation_id: str, amount: float, ttl: float
    ) -> tuple[int, float, float, Any] | None:
        return self.run(self._ledger_reserve, buckets, reservation_id, amount, ttl)

    async def aledger_reserve(
        self, buckets: Sequence[tuple[str, str, float]], reservation_id: str, amount: float, ttl: float
    ) -> tuple[int, float, float, Any] | None:
        return await self.arun(self._ledger_reserve, buckets, reservation_id, amount, ttl)

    def ledger_settle(self, reservation_id: str, buckets: Sequence[tuple[str, str]], actual: float) -> list[float]:
        return self.run(self._ledger_settle, reservation_id, buckets, actual)

    async def aledger_settle(
        self, reservation_id: str, buckets: Sequence[tuple[str, str]], actual: float
    ) -> list[float]:
        return await self.arun(self._ledger_settle, reservation_id, buckets, actual)

    def ledger_renew(self, reservation_ids: Sequence[str], buckets: Sequence[tuple[str, str]]) -> None:
        self.run(self._ledger_renew, reservation_ids, buckets)

    async def aledger_renew(self, reservation_ids: Sequence[str], buckets: Sequence[tuple[str, str]]) -> None:
        await self.arun(self._ledger_renew, reservation_ids, buckets)

    def ledger_bucket(self, scope: str, period: str, ttl: float) -> tuple[float, float]:
        return self.run(self._ledger_bucket, scope, period, ttl)

    async def aledger_bucket(self, scope: str, period: str, ttl: float) -> tuple[float, float]:
        return await self.arun(self._ledger_bucket, scope, period, ttl)

    def ledger_version(self) -> int:
        return self.run(self._ledger_version)

    async def aledger_version(self) -> int:
        return await self.arun(self._ledger_version)

    def ledger_mark(self, scope: str, period: str, threshold: float) -> bool:
        return self.run(self._ledger_mark, scope, period, threshold)

    async def aledger_mark(self, scope: str, period: str, threshold: float) -> bool:
        return await self.arun(self._ledger_mark, scope, period, threshold)

    def schedule_reserve(
        self, names: Sequence[str], seconds: Sequence[float], max_wait: float | None
    ) -> tuple[bool, float]:
        return self.run(self._schedule_reserve, names, seconds, max_wait)

    async def aschedule_reserve(
        self, names: Sequence[str], seconds: Sequence[float], max_wait: float | None
    ) -> tuple[bool, float]:
        return await self.arun(self._schedule_reserve, names, seconds, max_wait)

    def schedule_start(self, names: Sequence[str], seconds: Sequence[float]) -> float:
        return self.run(self._schedule_start, names, seconds)

    async def aschedule_start(self, names: Sequence[str], seconds: Sequence[float]) -> float:
        return await self.arun(self._schedule_start, names, seconds)

    def lock_acquire(self, name: str, token: str, ttl: float) -> bool:
        return self.run(self._lock_acquire, name, token, ttl)

    async def alock_acquire(self, name: str, token: str, ttl: float) -> bool:
        return await self.arun(self._lock_acquire, name, token, ttl)

    def lock_release(self, name: str, token: str) -> bool:
        return self.run(self._lock_release, name, token)

    async def alock_release(self, name: str, token: str) -> bool:
        return await self.arun(self._lock_release, name, token)

    def lock_held(self, name: str) -> bool:
        return self.run(self._lock_held, name)

    async def alock_held(self, name: str) -> bool:
        return await self.arun(self._lock_held, name)


# -- Lua: each runs atomically in Redis, with Redis's clock. Floats go back as strings: Lua
# numbers would be truncated to integers. --

# Drop stale leases, then reserve in every bucket or in none; a refusal names (1-based) the
# first bucket whose spend alone leaves no room, else the first full one, and the changes counter.
_RESERVE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local id, amount, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n, keyttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local hard, soft = nil, nil  -- the first bucket whose spend alone leaves no room, else the first full one
for i = 1, n do
  local sk, hk, zk = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local stale = redis.call('ZRANGEBYSCORE', zk, '-inf', '(' .. tostring(now - ttl))
  for _, sid in ipairs(stale) do
    redis.call('HDEL', hk, sid)
    redis.call('ZREM', zk, sid)
  end
  local spent = tonumber(redis.call('GET', sk) or '0')
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', hk)) do reserved = reserved + tonumber(v) end
  local limit = tonumber(ARGV[5 + i])
  if amount > 0 and spent + reserved + amount > limit + 1e-9 then
    local miss = {0, i, tostring(spent), tostring(reserved)}
    if spent + amount > limit + 1e-9 then hard = hard or miss else soft = soft or miss end
  end
end
local refusal = hard or soft
if refusal then
  refusal[5] = redis.call('GET', KEYS[3 * n + 1]) or '0'
  return refusal
end
for i = 1, n do
  redis.call('HSET', KEYS[3 * i - 1], id, ARGV[2])
  redis.call('ZADD', KEYS[3 * i], now, id)
  redis.call('EXPIRE', KEYS[3 * i - 1], keyttl)
  redis.call('EXPIRE', KEYS[3 * i], keyttl)
end
return {1}
""")

_SETTLE = Script("""
local id, actual, keyttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local totals = {}
for i = 1, (#KEYS - 1) / 3 do
  local sk, hk, zk = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  redis.call('HDEL', hk, id)
  redis.call('ZREM', zk, id)
  if actual > 0 then
    redis.call('INCRBYFLOAT', sk, ARGV[2])
    redis.call('EXPIRE', sk, keyttl)
  end
  totals[i] = redis.call('GET', sk) or '0'
end
redis.call('INCR', KEYS[#KEYS])
redis.call('EXPIRE', KEYS[#KEYS], keyttl)
return totals
""")

_RENEW = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
for _, zk in ipairs(KEYS) do
  for _, id in ipairs(ARGV) do redis.call('ZADD', zk, 'XX', now, id) end
end
return 0
""")

_BUCKET = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local live = redis.call('ZRANGEBYSCORE', KEYS[3], tostring(now - tonumber(ARGV[1])), '+inf')
local reserved = 0
for _, id in ipairs(live) do reserved = reserved + tonumber(redis.call('HGET', KEYS[2], id) or '0') end
return {redis.call('GET', KEYS[1]) or '0', tostring(reserved)}
""")

_SCHEDULE_RESERVE = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local slot = now
for i, key in ipairs(KEYS) do
  local next_free = tonumber(redis.call('GET', key) or '0')
  if next_free > slot then slot = next_free end
end
local wait = slot - now
if tonumber(ARGV[1]) >= 0 and wait > tonumber(ARGV[1]) then return {0, tostring(wait)} end
for i, key in ipairs(KEYS) do
  local next_free = slot + tonumber(ARGV[i + 1])
  redis.call('SET', key, tostring(next_free), 'PX', math.ceil((next_free - now) * 1000) + 60000)
end
return {1, tostring(wait)}
""")

_SCHEDULE_START = Script("""
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local n = #ARGV
local remaining = 0
for i = 1, n do
  local free_at = tonumber(redis.call('GET', KEYS[i]) or '0')
  if free_at - now > remaining then remaining = free_at - now end
end
if remaining > 0 then return tostring(remaining) end
for i = 1, n do
  local free_at = now + tonumber(ARGV[i])
  local ttl = math.ceil(tonumber(ARGV[i]) * 1000) + 60000
  redis.call('SET', KEYS[i], tostring(free_at), 'PX', ttl)
  local next_free = tonumber(redis.call('GET', KEYS[n + i]) or '0')
  if free_at > next_free then redis.call('SET', KEYS[n + i], tostring(free_at), 'PX', ttl) end
end
return '0'
""")

# Deletes the lock only if it still holds our token (it may have expired and been retaken).
_RELEASE = Script("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0")
