"""Where the policies shared by every process keep their state: Redis (``REDIS_URL``).

The storage half of ``integrations.fleet`` (which decides, waits and raises): each function here
is ONE round trip to Redis (a Lua script run with ``EVALSHA``, atomic on the server), takes and
returns plain numbers, and raises ``SharedStateUnavailable`` for any Redis or socket error. Times
are the Redis server's (``TIME``, read inside the scripts: never a round trip of its own), so
processes whose clocks differ still share one timeline. An event loop uses the same scripts
through its own redis.asyncio client (``Admitter.call_async``, ``admit_async``,
``start_cooldown_async``).

A healthy call costs ONE round trip, whatever policies are on: ``Admitter`` (the admission:
the places given back since the last one, the cool-down, the fleet bulkhead's lease, the retry
budget's count and the rate limit's slot, in one script). Its place in the fleet bulkhead is
given back without a round trip of its own (``give_back_later``).

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
import atexit
import contextlib
import hashlib
import threading
import time
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
    "BULKHEAD_FULL",
    "COOLING_DOWN",
    "GIVE_BACK_AFTER",
    "GIVE_BACK_LOOK_MAX",
    "REFUSED",
    "Admission",
    "Admitter",
    "ServiceState",
    "SharedStateUnavailable",
    "aclose",
    "admit",
    "admit_async",
    "budget_counts",
    "cooldown_left",
    "flush_given_back",
    "get_redis",
    "give_back_later",
    "give_back_lease",
    "give_back_leases",
    "key",
    "leases_in_force",
    "rate_used_last_second",
    "read_status",
    "start_cooldown",
    "start_cooldown_async",
    "take_lease",
]

#: ``Admission.code``: a rate-limit slot was reserved, ``wait`` seconds from now.
ADMITTED = 0
#: A cool-down is in force for ``wait`` more seconds; nothing was reserved.
COOLING_DOWN = 1
#: The next slot is ``wait`` seconds away, beyond the call's deadline; nothing was reserved.
REFUSED = 2
#: A retry, and the service's retry budget is spent; nothing was reserved.
BUDGET_SPENT = 3
#: The fleet bulkhead is full; its first lease ends in ``wait`` seconds; nothing was reserved.
BULKHEAD_FULL = 4

#: ``admit``'s ``attempt``: not counted in a retry budget, a first attempt, a retry.
NOT_COUNTED, FIRST_ATTEMPT, RETRY = 0, 1, 2

KEY_PREFIX = "tether:integrations:"


class SharedStateUnavailable(Exception):
    """Redis could not be asked (down, unreachable, too slow, or refused the command)."""


def key(service: str, what: str) -> str:
    """The Redis key of ``what`` (``rate``, ``cooldown``...) for ``service``."""
    return f"{KEY_PREFIX}{service}:{what}"


# Everything a call asks before it goes out, in ONE atomic round trip: the places given back
# since this process last asked, the cool-down, the fleet bulkhead's lease, the retry budget and
# the GCRA (the generic cell rate algorithm). KEYS: 1 rate key, 2 cool-down key, 3 budget key,
# 4 rate usage key (calls per second of the Redis clock, this one and the one before: for
# operators), 5 bulkhead key. ARGV (integers; times in microseconds), the ones fixed per service
# first (so that a client can encode them once): 1 the emission interval (0: no rate limit),
# 2 the burst tolerance (interval x (burst - 1)), 3 1 to check the cool-down (0 not to), 4 the
# budget's window, 5 its ratio in millionths, 6 the retries always allowed per window, in
# millionths, 7 the fleet bulkhead's size (0: none); then per call: 8 the longest wait the caller
# accepts, 9 the attempt's kind for the budget (0: not counted, 1: a first attempt, 2: a retry),
# 10 the lease (how long the place is held at most), 11 the place's token, 12... tokens of places
# this process gives back.
# Returns {code, wait in microseconds}: 0 admitted (its place leased, its slot reserved, its
# attempt counted), 1 cooling down, 2 no slot before the deadline, 3 the retry budget is spent,
# 4 the bulkhead is full (wait: until its first lease ends). Nothing is taken, counted nor
# reserved unless admitted; the places given back are given back whatever the answer.
#
# The budget: first attempts and retries are counted in fixed windows of ARGV[4]; the last
# window's counts weigh what is left of it over the current one (a sliding-window estimate, as
# the breaker's failure rate). A retry is allowed while retries + 1 <= ratio x first attempts +
# the minimum.
_ADMIT = """
if #ARGV > 11 then redis.call('ZREM', KEYS[5], unpack(ARGV, 12, #ARGV)) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[3] == '1' then
  local left = redis.call('PTTL', KEYS[2])
  if left > 0 then return {1, left * 1000} end
end
local size = tonumber(ARGV[7])
if size > 0 and redis.call('ZCARD', KEYS[5]) >= size then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', string.format('%d', now))
  if redis.call('ZCARD', KEYS[5]) >= size then
    local first = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
    return {4, tonumber(first[2]) - now}
  end
end
local kind = tonumber(ARGV[9])
local bucket, b, f, r, pf, pr
if kind > 0 then
  local window = tonumber(ARGV[4])
  bucket = math.floor(now / window)
  local h = redis.call('HMGET', KEYS[3], 'b', 'f', 'r', 'pf', 'pr')
  b = tonumber(h[1] or '-1')
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
    local allowed = firsts * tonumber(ARGV[5]) / 1000000 + tonumber(ARGV[6]) / 1000000
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
  if wait > tonumber(ARGV[8]) then return {2, wait} end
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
    redis.call('PEXPIRE', KEYS[4], math.floor(wait / 1000) + 3000)
  end
end
if size > 0 then
  local expiry = now + tonumber(ARGV[10])
  redis.call('ZADD', KEYS[5], string.format('%d', expiry), ARGV[11])
  local ms = math.floor(tonumber(ARGV[10]) / 1000) + 1000
  if redis.call('PTTL', KEYS[5]) < ms then redis.call('PEXPIRE', KEYS[5], ms) end
end
if kind > 0 then
  if kind == 1 then f = f + 1 else r = r + 1 end
  if b == bucket then
    redis.call('HINCRBY', KEYS[3], kind == 1 and 'f' or 'r', 1)
  else
    redis.call('HSET', KEYS[3], 'b', bucket, 'f', f, 'r', r, 'pf', pf, 'pr', pr)
    redis.call('PEXPIRE', KEYS[3], math.floor(tonumber(ARGV[4]) / 500) + 1000)
  end
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


# What operators see of one service, in one round trip (``read_status``). KEYS: rate usage key,
# cool-down key, budget key, bulkhead key. ARGV: the budget's window (microseconds; 0: none).
# Returns {calls let out in the last whole second, cool-down left (ms, 0: none), its reason,
# first attempts x 1000, retries x 1000 (the budget's sliding estimates), leases in force}.
_STATUS = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
local now = sec * 1000000 + tonumber(t[2])
local u = redis.call('HMGET', KEYS[1], 's', 'n', 'ps', 'pn')
local used = 0
if tonumber(u[1] or '-1') == sec - 1 then
  used = tonumber(u[2] or '0')
elseif tonumber(u[3] or '-1') == sec - 1 then
  used = tonumber(u[4] or '0')
end
local left = redis.call('PTTL', KEYS[2])
local reason = ''
if left > 0 then reason = redis.call('GET', KEYS[2]) or '' else left = 0 end
local firsts, retries = 0, 0
local window = tonumber(ARGV[1])
if window > 0 then
  local h = redis.call('HMGET', KEYS[3], 'b', 'f', 'r', 'pf', 'pr')
  if h[1] then
    local b = tonumber(h[1])
    local f, r = tonumber(h[2] or '0'), tonumber(h[3] or '0')
    local pf, pr = tonumber(h[4] or '0'), tonumber(h[5] or '0')
    local bucket = math.floor(now / window)
    local weight = 1 - (now - bucket * window) / window
    if b == bucket then
      firsts, retries = f + pf * weight, r + pr * weight
    elseif b == bucket - 1 then
      firsts, retries = f * weight, r * weight
    end
  end
end
local leases = redis.call('ZCOUNT', KEYS[4], '(' .. string.format('%d', now), '+inf')
return {used, left, reason, math.floor(firsts * 1000 + 0.5), math.floor(retries * 1000 + 0.5),
        leases}
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
    """What Redis answered a call asking to go out: ``code`` (``ADMITTED``, ``COOLING_DOWN``,
    ``REFUSED``, ``BUDGET_SPENT`` or ``BULKHEAD_FULL``) and ``wait``, in seconds."""

    code: int
    wait: float


#: Connections kept idle per process for the admission's fast path (more are closed after use).
_IDLE_CONNECTIONS = 32


class _Connection:
    """This process's Redis client and its registered scripts, for one URL and timeout.

    Besides the client (and its pool), the admission keeps a few connections of its own:
    ``call_packed`` sends a command encoded once (``Admitter``) on one of them and reads the
    answer, without the client's per-command machinery (pool checkout, argument encoding,
    retry and observability hooks: about two thirds of redis-py's cost of a call, measured)."""

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
        self.status = self.client.register_script(_STATUS)
        self.errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        self.no_script: type[BaseException] = redis.exceptions.NoScriptError
        self.idle: list[Any] = []

    def call_packed(self, packed: bytes) -> Any:
        """Send ``packed`` (one command, RESP-encoded) and return its answer; the caller maps
        ``errors``. The list's ``pop`` and ``append`` are atomic: each thread has a connection
        to itself for the time of its call."""
        idle = self.idle
        try:
            connection = idle.pop()
        except IndexError:
            pool = self.client.connection_pool
            connection = pool.connection_class(**pool.connection_kwargs)
        try:
            connection.send_packed_command((packed,), check_health=False)
            return connection.read_response()
        except self.no_script:
            raise  # the answer was read: the connection is fine
        except BaseException:
            connection.disconnect()  # a half-read answer must not reach the next call
            raise
        finally:
            if len(idle) < _IDLE_CONNECTIONS:
                idle.append(connection)
            else:
                connection.disconnect()

    def close(self) -> None:
        self.client.close()
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.disconnect()


_lock = threading.Lock()
_connection: _Connection | None = None


def _forget_after_fork() -> None:
    global _connection, _lock, _pending_lock, _flush_wakeup, _flusher, _flush_armed
    _connection = None
    _lock = threading.Lock()
    _pending.clear()  # the parent gives its own places back
    _pending_lock = threading.Lock()
    _flush_wakeup = threading.Event()  # its lock may have been held by the parent's flusher
    _flusher = None
    _flush_armed = False


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
                old.close()
        return _connection


def get_redis() -> redis.Redis:
    """This process's client of the shared policies' Redis (for operator views and tests)."""
    return _connect().client


def close() -> None:
    """Close this process's Redis client (tests; it is made again on the next call), and forget
    the event loops' clients (``aclose`` closes the running loop's). Places waiting to be given
    back are given back first, if Redis answers."""
    global _connection
    if _pending:
        flush_given_back()
    with _lock:
        old, _connection = _connection, None
    _async_connections.clear()
    if old is not None:
        old.close()


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


async def _run_async(script_name: str, keys: list[Any], args: list[Any]) -> Any:
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


async def admit_async(
    service: str,
    *,
    interval: float | None,
    burst: int,
    max_wait: float,
    cooldown: bool,
    attempt: int = NOT_COUNTED,
    budget: tuple[float, float, float] | None = None,
    bulkhead: int | None = None,
    lease: float = 0.0,
    token: str = "",
) -> Admission:
    """``admit`` on an event loop (the same script and arguments, ``Admitter.call_async``)."""
    admitter = Admitter(
        service,
        interval=interval,
        burst=burst,
        cooldown=cooldown,
        budget=budget,
        bulkhead=bulkhead,
    )
    code, wait = await admitter.call_async(
        max_wait=max_wait,
        attempt=attempt if budget is not None else NOT_COUNTED,
        lease=lease,
        token=token,
    )
    return Admission(code, wait)


async def start_cooldown_async(service: str, seconds: float, reason: str) -> bool:
    """``start_cooldown`` on an event loop."""
    return bool(await _run_async("cooldown", *_cooldown_call(service, seconds, reason)))


def _us(seconds: float) -> int:
    return max(0, round(seconds * 1_000_000))


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


#: The admission script's SHA1, as ``EVALSHA`` names it (the same on every Redis).
_ADMIT_SHA = hashlib.sha1(_ADMIT.encode(), usedforsecurity=False).hexdigest()
#: The most places one admission gives back (the rest go with the next one, or the flusher).
_MAX_GIVEN_BACK = 64


class Admitter:
    """The admission of one service's calls (``_ADMIT``), with its keys and its fixed arguments
    encoded once: a call encodes only its own four (and the places given back), and sends the
    command on a connection of the admission's own (``_Connection.call_packed``). One round trip.

    ``interval`` seconds between slots (None: no rate limit), ``burst`` at once, ``cooldown``
    checked, ``budget`` (window, ratio, minimum retries per window) or None, ``bulkhead`` the
    fleet bulkhead's size or None."""

    __slots__ = ("args", "bulkhead", "fixed", "keys", "service")

    def __init__(
        self,
        service: str,
        *,
        interval: float | None,
        burst: int,
        cooldown: bool,
        budget: tuple[float, float, float] | None,
        bulkhead: int | None,
    ) -> None:
        self.service = service
        self.bulkhead = bulkhead
        step = _us(interval) if interval else 0
        window, ratio, minimum = budget if budget is not None else (1.0, 0.0, 0.0)
        #: The script's keys and fixed arguments (the event loop's path sends them as they are).
        self.keys = [key(service, what).encode() for what in _ADMIT_KEYS]
        self.args = [
            b"%d" % step,
            b"%d" % (step * max(0, burst - 1)),
            b"1" if cooldown else b"0",
            b"%d" % _us(window),
            b"%d" % round(ratio * 1_000_000),
            b"%d" % round(minimum * 1_000_000),
            b"%d" % (bulkhead or 0),
        ]
        words = [b"EVALSHA", _ADMIT_SHA.encode(), b"%d" % len(self.keys), *self.keys, *self.args]
        #: The command's fixed words, encoded; the count of all its words goes first.
        self.fixed = (len(words) + 4, b"".join(_bulk(word) for word in words))

    def __call__(
        self, *, max_wait: float, attempt: int, lease: float = 0.0, token: str = ""
    ) -> tuple[int, float]:
        """(code, wait in seconds) for a call accepting to wait ``max_wait`` seconds, counted
        in the budget as ``attempt``, holding its bulkhead place (if any) under ``token`` for
        ``lease`` seconds at most. The places this process gave back for the service since it
        last asked (``give_back_later``) go with it."""
        count, fixed = self.fixed
        words = self._per_call(max_wait, attempt, lease, token)
        packed = b"".join(
            (b"*%d\r\n" % (count + len(words) - 4), fixed, *(_bulk(word) for word in words))
        )
        connection = _connect()
        try:
            try:
                code, wait = connection.call_packed(packed)
            except connection.no_script:  # a Redis that restarted, or another one: load it
                connection.client.script_load(_ADMIT)
                code, wait = connection.call_packed(packed)
        except connection.errors as exc:
            raise SharedStateUnavailable(type(exc).__name__) from exc
        return code, wait / 1_000_000

    async def call_async(
        self, *, max_wait: float, attempt: int, lease: float = 0.0, token: str = ""
    ) -> tuple[int, float]:
        """The same admission from an event loop (its redis.asyncio client): the same script,
        keys and arguments, the places given back with it the same. One round trip."""
        words = self._per_call(max_wait, attempt, lease, token)
        code, wait = await _run_async("admit", self.keys, [*self.args, *words])
        return int(code), int(wait) / 1_000_000

    def _per_call(self, max_wait: float, attempt: int, lease: float, token: str) -> list[bytes]:
        """The script's per-call arguments (ARGV 8...): the wait accepted, the attempt's kind,
        the lease, the token, then the places this process gave back for the service since it
        last asked (taken from ``give_back_later``'s list)."""
        given_back: list[str] = []
        if self.bulkhead and _pending and self.service in _pending:
            given_back = _take_given_back(self.service, _MAX_GIVEN_BACK)
        return [
            b"%d" % (max_wait * 1_000_000 if max_wait > 0 else 0),
            b"%d" % attempt,
            b"%d" % (lease * 1_000_000 if lease > 0 else 0),
            token.encode(),
            *(t.encode() for t in given_back),
        ]


_ADMIT_KEYS = ("rate", "cooldown", "budget", "rate_usage", "bulkhead")


def admit(
    service: str,
    *,
    interval: float | None,
    burst: int,
    max_wait: float,
    cooldown: bool,
    attempt: int = NOT_COUNTED,
    budget: tuple[float, float, float] | None = None,
    bulkhead: int | None = None,
    lease: float = 0.0,
    token: str = "",
) -> Admission:
    """Ask for the next rate-limit slot of ``service`` (``interval`` seconds apart, ``burst``
    at once; None: no rate limit) no more than ``max_wait`` seconds away, first checking its
    cool-down when ``cooldown``, taking a place of its fleet bulkhead of ``bulkhead`` places
    (None: none) leased for ``lease`` seconds under ``token`` and, when ``budget`` is (window,
    ratio, minimum retries per window), counting a ``FIRST_ATTEMPT`` or allowing a ``RETRY``
    within it. One round trip (``Admitter`` is the same, encoded once per service)."""
    admitter = Admitter(
        service,
        interval=interval,
        burst=burst,
        cooldown=cooldown,
        budget=budget,
        bulkhead=bulkhead,
    )
    code, wait = admitter(
        max_wait=max_wait,
        attempt=attempt if budget is not None else NOT_COUNTED,
        lease=lease,
        token=token,
    )
    return Admission(int(code), wait)


# --- places given back later ------------------------------------------------------------------
#
# A call gives its fleet bulkhead place back as soon as it ends, but not in a round trip of its
# own: the token waits here, and goes to Redis with this process's next admission for the
# service (in its script), or with a background thread's ``ZREM`` once it has waited
# ``GIVE_BACK_AFTER`` seconds and no admission took it.
#
# The thread is woken once when a busy spell starts (an ``Event``), then looks now and then
# while places keep being given back, and waits to be woken again after ``_FLUSHER_IDLE`` looks
# with nothing given back. While the admissions carry every place (a busy process), it looks
# less and less often, down to once every ``GIVE_BACK_LOOK_MAX`` seconds; as soon as it finds a
# place to send (the process went quiet), every ``GIVE_BACK_AFTER`` again. Waking a thread every
# few milliseconds costs a busy process more CPU (measured: about 35 µs per call, the GIL
# changing hands) than the round trips it saves. A place is so held at most about
# ``GIVE_BACK_LOOK_MAX`` past its call, and only when no call of the service followed it.

#: Seconds a given-back place waits for the next admission to carry it.
GIVE_BACK_AFTER = 0.002
#: The longest the flusher waits between two looks (seconds).
GIVE_BACK_LOOK_MAX = 0.02
#: Looks with nothing given back after which the flusher waits to be woken again.
_FLUSHER_IDLE = 50

#: service -> [token, ``time.monotonic()`` when it was given back] of places given back, not
#: yet sent to Redis.
_pending: dict[str, list[tuple[str, float]]] = {}
_pending_lock = threading.Lock()
_flush_wakeup = threading.Event()
#: Whether the flusher is looking (a give-back need not wake it).
_flush_armed = False
#: The places given back so far (to tell an idle spell).
_given_back = 0
_flusher: threading.Thread | None = None

after_fork(_forget_after_fork)


def _take_given_back(service: str, most: int) -> list[str]:
    with _pending_lock:
        entries = _pending.pop(service, None)
        if not entries:
            return []
        if len(entries) > most:
            _pending[service] = entries[most:]
            entries = entries[:most]
    return [token for token, _ in entries]


def give_back_later(service: str, token: str) -> None:
    """Give back the place ``token`` holds in ``service``'s fleet bulkhead: with this process's
    next admission for the service, or within about ``GIVE_BACK_LOOK_MAX`` seconds (no round
    trip on the caller's path)."""
    global _flush_armed, _flusher, _given_back
    with _pending_lock:
        _pending.setdefault(service, []).append((token, time.monotonic()))
        _given_back += 1
        if _flush_armed:
            return
        _flush_armed = True
        if _flusher is None or not _flusher.is_alive():
            _flusher = threading.Thread(
                target=_flush_forever, name="tether-fleet-give-back", daemon=True
            )
            _flusher.start()
    _flush_wakeup.set()


def _flush_forever() -> None:
    global _flush_armed
    while True:
        _flush_wakeup.wait()
        _flush_wakeup.clear()
        idle, seen, pause = 0, -1, GIVE_BACK_AFTER
        while True:
            time.sleep(pause)
            with _pending_lock:
                if _given_back == seen and not _pending:
                    idle += 1
                    if idle >= _FLUSHER_IDLE:
                        _flush_armed = False
                        break
                else:
                    idle, seen = 0, _given_back
            sent = flush_given_back(older_than=GIVE_BACK_AFTER)
            pause = GIVE_BACK_AFTER if sent else min(pause * 2, GIVE_BACK_LOOK_MAX)


def flush_given_back(older_than: float | None = None) -> int:
    """Send the places this process gave back and has not yet sent (``give_back_later``) to
    Redis now (``older_than``: only those given back at least that many seconds ago); how many.
    Errors are swallowed: such a place comes back when its lease ends."""
    batch: dict[str, list[str]] = {}
    limit = None if older_than is None else time.monotonic() - older_than
    with _pending_lock:
        for service in list(_pending):
            entries = _pending[service]
            if limit is None:
                ready, kept = entries, []
            else:
                ready = [entry for entry in entries if entry[1] <= limit]
                kept = [entry for entry in entries if entry[1] > limit]
            if ready:
                batch[service] = [token for token, _ in ready]
            if kept:
                _pending[service] = kept
            else:
                del _pending[service]
    for service, tokens in batch.items():
        with contextlib.suppress(SharedStateUnavailable, ImproperlyConfigured):
            give_back_leases(service, tokens)
    return sum(len(tokens) for tokens in batch.values())


atexit.register(flush_given_back)


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
    give_back_leases(service, [token])


def give_back_leases(service: str, tokens: list[str]) -> None:
    """Give back the places ``tokens`` hold. One round trip."""
    if not tokens:
        return
    connection = _connect()
    try:
        connection.client.zrem(key(service, "bulkhead"), *tokens)
    except connection.errors as exc:
        raise SharedStateUnavailable(type(exc).__name__) from exc


def leases_in_force(service: str) -> int:
    """How many places of ``service``'s fleet-wide bulkhead are taken now (for operators): this
    process's places given back but not yet sent are sent first."""
    if service in _pending:
        tokens = _take_given_back(service, len(_pending.get(service, ())) or 1)
        with contextlib.suppress(SharedStateUnavailable):
            give_back_leases(service, tokens)
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


@dataclass(frozen=True, slots=True)
class ServiceState:
    """A service's fleet state now, as ``read_status`` reads it (for operators)."""

    #: Calls the rate limit let out in the last whole second (Redis's clock).
    rate_used_last_second: int
    #: Seconds left of the cool-down (0: none) and what started it.
    cooldown_left: float
    cooldown_reason: str
    #: The retry budget's first attempts and retries over its window (0 without a window).
    budget_first_attempts: float
    budget_retries: float
    #: Places of the fleet bulkhead taken now.
    leases_in_force: int


def read_status(service: str, budget_window: float | None = None) -> ServiceState:
    """Everything operators see of ``service``'s fleet state, in one round trip (this process's
    places given back but not yet sent are sent first)."""
    if service in _pending:
        tokens = _take_given_back(service, len(_pending.get(service, ())) or 1)
        with contextlib.suppress(SharedStateUnavailable):
            give_back_leases(service, tokens)
    used, left, reason, firsts, retries, leases = _run(
        "status",
        [key(service, "rate_usage"), key(service, "cooldown"), key(service, "budget"),
         key(service, "bulkhead")],
        [_us(budget_window) if budget_window else 0],
    )  # fmt: skip
    return ServiceState(
        int(used),
        int(left) / 1000,
        (reason or b"").decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason),
        int(firsts) / 1000,
        int(retries) / 1000,
        int(leases),
    )
