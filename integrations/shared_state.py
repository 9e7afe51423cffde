"""Where the policies shared by every process keep their state: Redis (``REDIS_URL``).

The storage half of ``integrations.fleet`` (which decides, waits and raises): each function here
is ONE round trip to Redis (a Lua script run with ``EVALSHA``, atomic on the server), takes and
returns plain numbers, and raises ``SharedStateUnavailable`` for any Redis or socket error. Times
are the Redis server's (``TIME``), so processes whose clocks differ still share one timeline. An
asynchronous runner would only need async twins of these few functions.

Keys, per service: ``tether:integrations:<service>:rate`` (the GCRA's theoretical arrival time,
microseconds), ``...:cooldown`` (present while a cool-down is in force; its expiry is the
cool-down's end), ``...:rate_usage`` (calls let out per second, for operators),
``...:budget`` (the retry budget's counts, a hash) and ``...:bulkhead`` (a sorted set: one
member per call in flight, scored by its lease's expiry). Every key expires by itself.

The client is made once per process (and again after a fork), with ``REDIS_TIMEOUT`` as its
connect and socket timeout, so that a dead or unreachable Redis costs a call at most that. The
URL is never logged nor put in an error message (it may hold a password).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from tether.fork import after_fork

from .conf import integrations_settings

if TYPE_CHECKING:
    import redis

__all__ = [
    "ADMITTED",
    "BUDGET_SPENT",
    "COOLING_DOWN",
    "REFUSED",
    "Admission",
    "SharedStateUnavailable",
    "aclose",
    "admit",
    "admit_async",
    "budget_counts",
    "cooldown_left",
    "get_redis",
    "give_back_lease",
    "give_back_lease_async",
    "key",
    "leases_in_force",
    "rate_used_last_second",
    "start_cooldown",
    "start_cooldown_async",
    "take_lease",
    "take_lease_async",
]

#: ``Admission.code``: a rate-limit slot was reserved, ``wait`` seconds from now.
ADMITTED = 0
#: A cool-down is in force for ``wait`` more seconds; nothing was reserved.
COOLING_DOWN = 1
#: The next slot is ``wait`` seconds away, beyond the call's deadline; nothing was reserved.
REFUSED = 2
#: A retry, and the service's retry budget is spent; nothing was reserved.
BUDGET_SPENT = 3

#: ``admit``'s ``attempt``: not counted in a retry budget, a first attempt, a retry.
NOT_COUNTED, FIRST_ATTEMPT, RETRY = 0, 1, 2

KEY_PREFIX = "tether:integrations:"


class SharedStateUnavailable(Exception):
    """Redis could not be asked (down, unreachable, too slow, or refused the command)."""


def key(service: str, what: str) -> str:
    """The Redis key of ``what`` (``rate``, ``cooldown``...) for ``service``."""
    return f"{KEY_PREFIX}{service}:{what}"


# The cool-down, the retry budget and the GCRA (the generic cell rate algorithm), in one atomic
# round trip. KEYS: rate key, cool-down key, budget key, rate usage key (calls per second of the
# Redis clock, this one and the one before: for operators). ARGV (integers; times in microseconds):
# 1 the emission interval (0: no rate limit), 2 the burst tolerance (interval x (burst - 1)),
# 3 the longest wait the caller accepts, 4 1 to check the cool-down (0 not to), 5 the attempt's
# kind for the budget (0: no budget, 1: a first attempt, 2: a retry), 6 the budget's window,
# 7 its ratio in millionths, 8 the retries always allowed per window, in millionths.
# Returns {code, wait in microseconds}: 0 admitted (its slot reserved, its attempt counted),
# 1 cooling down, 2 no slot before the deadline, 3 the retry budget is spent (nothing counted
# nor reserved unless admitted).
#
# The budget: first attempts and retries are counted in fixed windows of ARGV[6]; the last
# window's counts weigh what is left of it over the current one (a sliding-window estimate, as
# the breaker's failure rate). A retry is allowed while retries + 1 <= ratio x first attempts +
# the minimum.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[4] == '1' then
  local left = redis.call('PTTL', KEYS[2])
  if left > 0 then return {1, left * 1000} end
end
local kind = tonumber(ARGV[5])
local bucket, f, r, pf, pr
if kind > 0 then
  local window = tonumber(ARGV[6])
  bucket = math.floor(now / window)
  local h = redis.call('HMGET', KEYS[3], 'b', 'f', 'r', 'pf', 'pr')
  local b = tonumber(h[1] or '-1')
  f, r = tonumber(h[2] or '0'), tonumber(h[3] or '0')
  pf, pr = tonumber(h[4] or '0'), tonumber(h[5] or '0')
  if b == bucket - 1 then
    pf, pr, f, r = f, r, 0, 0
  elseif b ~= bucket then
    pf, pr, f, r = 0, 0, 0, 0
  end
  if kind == 2 then
    local weight = 1 - (now - bucket * window) / window
    local firsts = f + pf * weight
    local retries = r + pr * weight
    local allowed = firsts * tonumber(ARGV[7]) / 1000000 + tonumber(ARGV[8]) / 1000000
    if retries + 1 > allowed then return {3, 0} end
  end
end
local wait = 0
local interval = tonumber(ARGV[1])
if interval > 0 then
  local tolerance = tonumber(ARGV[2])
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  if tat < now then tat = now end
  wait = tat - tolerance - now
  if wait < 0 then wait = 0 end
  if wait > tonumber(ARGV[3]) then return {2, wait} end
  local new_tat = tat + interval
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX',
             math.floor((new_tat - now) / 1000) + 1000)
  local sec = math.floor((now + wait) / 1000000)
  local u = redis.call('HMGET', KEYS[4], 's', 'n')
  local s, n = tonumber(u[1] or '-1'), tonumber(u[2] or '0')
  if s == sec then
    redis.call('HINCRBY', KEYS[4], 'n', 1)
  elseif s < sec then
    redis.call('HSET', KEYS[4], 's', sec, 'n', 1, 'ps', s, 'pn', n)
  end
  redis.call('PEXPIRE', KEYS[4], math.floor(wait / 1000) + 3000)
end
if kind > 0 then
  if kind == 1 then f = f + 1 else r = r + 1 end
  redis.call('HSET', KEYS[3], 'b', bucket, 'f', f, 'r', r, 'pf', pf, 'pr', pr)
  redis.call('PEXPIRE', KEYS[3], math.floor(tonumber(ARGV[6]) / 500) + 1000)
end
return {0, wait}
"""

# A cool-down of ARGV[1] milliseconds, never shortening one already in force. KEYS: cool-down
# key; ARGV: milliseconds, what caused it (kept as the value, for operators).
_COOLDOWN = """
local ms = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < ms then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ms)
  return 1
end
return 0
"""


# A place in the fleet's bulkhead, leased. KEYS: the bulkhead's sorted set. ARGV: the limit, the
# lease (microseconds), this call's token. Expired leases (a killed process's) are dropped first.
# Returns {1, 0} when the place is taken, else {0, microseconds until the first lease ends}.
_LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  local expiry = now + tonumber(ARGV[2])
  redis.call('ZADD', KEYS[1], string.format('%d', expiry), ARGV[3])
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[1], math.floor((tonumber(last[2]) - now) / 1000) + 1000)
  return {1, 0}
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, tonumber(first[2]) - now}
"""


@dataclass(frozen=True, slots=True)
class Admission:
    """What Redis answered a call asking to go out: ``code`` (``ADMITTED``, ``COOLING_DOWN`` or
    ``REFUSED``) and ``wait``, in seconds."""

    code: int
    wait: float


class _Connection:
    """This process's Redis client and its registered scripts, for one URL and timeout."""

    def __init__(self, url: str, timeout: float) -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - the extra names it
            raise ImproperlyConfigured(
                'INTEGRATIONS["REDIS_URL"] needs the redis package: '
                "pip install 'django-tether[redis]'."
            ) from exc
        self.source = (url, timeout)
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            retry=None,
        )
        self.admit = self.client.register_script(_ADMIT)
        self.cooldown = self.client.register_script(_COOLDOWN)
        self.lease = self.client.register_script(_LEASE)
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.no_script: type[BaseException] = redis.exceptions.NoScriptError


_lock = threading.Lock()
_connection: _Connection | None = None


def _forget_after_fork() -> None:
    global _connection, _lock
    _connection = None
    _lock = threading.Lock()


after_fork(_forget_after_fork)


def _source() -> tuple[str, float]:
    url = integrations_settings["REDIS_URL"]
    if not url:
        raise ImproperlyConfigured(
            'A shared policy (RATE_LIMIT, SHARED_COOLDOWN...) is set but INTEGRATIONS["REDIS_URL"] '
            "is not."
        )
    return (url, float(integrations_settings["REDIS_TIMEOUT"]))


def _connect() -> _Connection:
    global _connection
    source = _source()
    connection = _connection
    if connection is not None and connection.source == source:
        return connection
    with _lock:
        if _connection is None or _connection.source != source:
            old, _connection = _connection, _Connection(*source)
            if old is not None:
                old.client.close()
        return _connection


def get_redis() -> redis.Redis:
    """This process's client of the shared policies' Redis (for operator views and tests)."""
    return _connect().client


def close() -> None:
    """Close this process's Redis client (tests; it is made again on the next call), and forget
    the event loops' clients (``aclose`` closes the running loop's)."""
    global _connection
    with _lock:
        old, _connection = _connection, None
    _async_connections.clear()
    if old is not None:
        old.client.close()


def _run(script_name: str, keys: list[str], args: list[Any]) -> Any:
    connection = _connect()
    script = getattr(connection, script_name)
    client = connection.client
    try:
        try:  # EVALSHA directly: redis-py's Script wrapper costs as much as a third of the call
            return client.evalsha(script.sha, len(keys), *keys, *args)
        except connection.no_script:  # a Redis that restarted, or another one: load it again
            script.sha = client.script_load(script.script)
            return client.evalsha(script.sha, len(keys), *keys, *args)
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc


# -- the same scripts from an event loop (``AsyncServiceClient``) ---------------------------------


class _AsyncConnection:
    """One event loop's redis.asyncio client (its connections belong to that loop) and the
    same registered scripts."""

    def __init__(self, url: str, timeout: float) -> None:
        import redis
        import redis.asyncio
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.source = (url, timeout)
        self.client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )
        self.admit = self.client.register_script(_ADMIT)
        self.cooldown = self.client.register_script(_COOLDOWN)
        self.lease = self.client.register_script(_LEASE)
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.no_script: type[BaseException] = redis.exceptions.NoScriptError


#: event loop -> its client (a loop that is gone takes its client with it).
_async_connections: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncConnection] = (
    weakref.WeakKeyDictionary()
)


def _connect_async() -> _AsyncConnection:
    source = _source()
    loop = asyncio.get_running_loop()
    connection = _async_connections.get(loop)
    if connection is None or connection.source != source:
        connection = _async_connections[loop] = _AsyncConnection(*source)
    return connection


async def aclose() -> None:
    """Close the running event loop's Redis client (it is made again on its next call)."""
    connection = _async_connections.pop(asyncio.get_running_loop(), None)
    if connection is not None:
        await connection.client.aclose()


async def _run_async(script_name: str, keys: list[str], args: list[Any]) -> Any:
    """``_run`` on an event loop: EVALSHA, loading the script when Redis lacks it."""
    connection = _connect_async()
    script = getattr(connection, script_name)
    client = connection.client
    try:
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except connection.no_script:
            script.sha = await client.script_load(script.script)
            return await client.evalsha(script.sha, len(keys), *keys, *args)
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc


async def admit_async(service: str, **kwargs: Any) -> Admission:
    """``admit`` on an event loop (the same script and arguments)."""
    code, wait = await _run_async("admit", *_admit_call(service, **kwargs))
    return Admission(int(code), int(wait) / 1_000_000)


async def start_cooldown_async(service: str, seconds: float, reason: str) -> bool:
    """``start_cooldown`` on an event loop."""
    return bool(await _run_async("cooldown", *_cooldown_call(service, seconds, reason)))


async def take_lease_async(
    service: str, *, limit: int, lease: float, token: str
) -> tuple[bool, float]:
    """``take_lease`` on an event loop."""
    taken, wait = await _run_async("lease", [key(service, "bulkhead")], [limit, _us(lease), token])
    return bool(taken), int(wait) / 1_000_000


async def give_back_lease_async(service: str, token: str) -> None:
    """``give_back_lease`` on an event loop."""
    connection = _connect_async()
    try:
        await connection.client.zrem(key(service, "bulkhead"), token)
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


def admit(
    service: str,
    *,
    interval: float | None,
    burst: int,
    max_wait: float,
    cooldown: bool,
    attempt: int = NOT_COUNTED,
    budget: tuple[float, float, float] | None = None,
) -> Admission:
    """Ask for the next rate-limit slot of ``service`` (``interval`` seconds apart, ``burst``
    at once; None: no rate limit) no more than ``max_wait`` seconds away, first checking its
    cool-down when ``cooldown`` and, when ``budget`` is (window, ratio, minimum retries per
    window), counting a ``FIRST_ATTEMPT`` or allowing a ``RETRY`` within it. One round trip."""
    code, wait = _run(
        "admit",
        *_admit_call(
            service,
            interval=interval,
            burst=burst,
            max_wait=max_wait,
            cooldown=cooldown,
            attempt=attempt,
            budget=budget,
        ),
    )
    return Admission(int(code), int(wait) / 1_000_000)


def _admit_call(
    service: str,
    *,
    interval: float | None,
    burst: int,
    max_wait: float,
    cooldown: bool,
    attempt: int = NOT_COUNTED,
    budget: tuple[float, float, float] | None = None,
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of the admit script (``admit`` and ``admit_async``)."""
    step = _us(interval) if interval else 0
    window, ratio, minimum = budget if budget is not None else (1.0, 0.0, 0.0)
    return (
        [
            key(service, "rate"),
            key(service, "cooldown"),
            key(service, "budget"),
            key(service, "rate_usage"),
        ],
        [
            step,
            step * max(0, burst - 1),
            _us(max_wait),
            1 if cooldown else 0,
            attempt if budget is not None else NOT_COUNTED,
            _us(window),
            round(ratio * 1_000_000),
            round(minimum * 1_000_000),
        ],
    )


def budget_counts(service: str, window: float) -> tuple[float, float]:
    """First attempts and retries over the last ``window`` seconds, as the budget estimates
    them (for operators)."""
    connection = _connect()
    try:
        seconds, micros = connection.client.time()
        values = connection.client.hmget(key(service, "budget"), "b", "f", "r", "pf", "pr")
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc
    b, f, r, pf, pr = (float(v) if v is not None else None for v in values)
    if b is None:
        return 0.0, 0.0
    now = seconds * 1_000_000 + micros
    span = _us(window)
    bucket = now // span
    weight = 1 - (now - bucket * span) / span
    if b == bucket:
        return (f or 0) + (pf or 0) * weight, (r or 0) + (pr or 0) * weight
    if b == bucket - 1:
        return (f or 0) * weight, (r or 0) * weight
    return 0.0, 0.0


def start_cooldown(service: str, seconds: float, reason: str) -> bool:
    """Stop every process calling ``service`` for ``seconds`` (never shortening a cool-down in
    force); True when this one is now the cool-down. One round trip."""
    return bool(_run("cooldown", *_cooldown_call(service, seconds, reason)))


def _cooldown_call(service: str, seconds: float, reason: str) -> tuple[list[str], list[Any]]:
    return [key(service, "cooldown")], [max(1, round(seconds * 1000)), reason[:200]]


def cooldown_left(service: str) -> tuple[float, str]:
    """Seconds left of ``service``'s cool-down (0 when none) and what caused it."""
    connection = _connect()
    try:
        pipe = connection.client.pipeline(transaction=False)
        pipe.pttl(key(service, "cooldown"))
        pipe.get(key(service, "cooldown"))
        left, reason = pipe.execute()
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc
    if left is None or left <= 0:
        return 0.0, ""
    return left / 1000, (reason or b"").decode("utf-8", "replace")


def take_lease(service: str, *, limit: int, lease: float, token: str) -> tuple[bool, float]:
    """Take one of ``limit`` places in ``service``'s fleet-wide bulkhead for ``lease`` seconds
    under ``token``: (True, 0), or (False, seconds until the first lease in force ends). One
    round trip."""
    taken, wait = _run("lease", [key(service, "bulkhead")], [limit, _us(lease), token])
    return bool(taken), int(wait) / 1_000_000


def give_back_lease(service: str, token: str) -> None:
    """Give back the place ``token`` holds (nothing when its lease already ended). One round
    trip."""
    connection = _connect()
    try:
        connection.client.zrem(key(service, "bulkhead"), token)
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc


def leases_in_force(service: str) -> int:
    """How many places of ``service``'s fleet-wide bulkhead are taken now (for operators)."""
    connection = _connect()
    try:
        seconds, micros = connection.client.time()
        return int(
            connection.client.zcount(
                key(service, "bulkhead"), f"({seconds * 1_000_000 + micros}", "+inf"
            )
        )
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc


def rate_used_last_second(service: str) -> int:
    """Calls of ``service`` the shared rate limit let out in the last whole second (Redis's
    clock; for operators)."""
    connection = _connect()
    try:
        seconds, _micros = connection.client.time()
        values = connection.client.hmget(key(service, "rate_usage"), "s", "n", "ps", "pn")
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc
    s, n, ps, pn = (int(v) if v is not None else None for v in values)
    if s == seconds - 1:
        return n or 0
    if ps == seconds - 1:
        return pn or 0
    return 0
