"""Signals of the integrations app (sender is the service name, a ``str``, unless noted).

- ``call_finished(service, operation, outcome, duration, attempts)``: one public call ended;
  ``outcome`` is ``"success"`` or the snake_case name of the error class raised
  (``integration_timeout``, ``circuit_open_error``, ...); ``duration`` in seconds, retries included.
- ``call_retried(service, operation, attempt, delay, error)``: attempt number ``attempt`` failed
  with ``error`` and the next one starts after ``delay`` seconds.
- ``breaker_transitioned(breaker, from_state, to_state, reason, actor)`` (sender
  ``CircuitBreaker``): sent after the transition committed.
- ``shared_state_unavailable(service, error_class)``: the Redis of the shared policies
  (``INTEGRATIONS["REDIS_URL"]``) could not be asked; the call went out without them.
- ``cooldown_started(service, operation, seconds, status)``: the vendor answered ``status``
  (429, or 503 with ``Retry-After``) and every process now holds its calls for ``seconds``.
- ``retry_budget_spent(service, operation)``: a call's failure was not retried because the
  service's retry budget was spent.
- ``call_throttled(service, operation, probability)``: this process's adaptive throttle
  rejected an attempt locally (``Throttled``) with that probability.
"""

from django.dispatch import Signal

call_finished = Signal()
call_retried = Signal()
breaker_transitioned = Signal()
shared_state_unavailable = Signal()
cooldown_started = Signal()
retry_budget_spent = Signal()
call_throttled = Signal()
