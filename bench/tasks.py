"""The Celery baseline: a no-op task that only counts itself in Redis, so the bench sees it."""

from functools import cache

import redis
from celery import shared_task
from django.conf import settings

DONE_KEY = "tether-bench:noop-done"


@cache
def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


@shared_task(name="bench.noop", ignore_result=True)
def noop() -> None:
    _redis().incr(DONE_KEY)
