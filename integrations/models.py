"""Circuit breakers, stored in the database so every web and worker process shares them.

``CircuitBreaker`` is one row per service: its state, counters and optional per-breaker policy
overrides. ``BreakerTransition`` is the audit trail: every change of state, who made it and why.
The state machine that moves a row from state to state is ``integrations.breaker``; the one
module that writes these rows is ``integrations.storage``.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

__all__ = ["BreakerState", "BreakerTransition", "CircuitBreaker"]


class CircuitBreaker(models.Model):
    class State(models.TextChoices):
        """The five states of a breaker (what each means: ``integrations.breaker``)."""

        CLOSED = "closed", _("closed")
        OPEN = "open", _("open")
        HALF_OPEN = "half_open", _("half-open")
        FORCED_OPEN = "forced_open", _("forced open")
        DISABLED = "disabled", _("disabled")

    name = models.CharField(
        _("name"), max_length=200, unique=True, help_text=_("The service name.")
    )
    state = models.CharField(_("state"), max_length=16, choices=State.choices, default=State.CLOSED)
    version = models.PositiveBigIntegerField(
        _("version"),
        default=0,
        help_text=_(
            "Incremented on every change of state; conditional transitions check it so that "
            "a decision taken on an older state never applies to a newer one."
        ),
    )
    consecutive_failures = models.PositiveIntegerField(_("consecutive failures"), default=0)
    total_successes = models.PositiveBigIntegerField(
        _("total successes"),
        default=0,
        help_text=_("Approximate: each process adds its successes in batches."),
    )
    total_failures = models.PositiveBigIntegerField(_("total failures"), default=0)
    half_open_in_flight = models.PositiveIntegerField(_("probes in flight"), default=0)
    probe_lease_until = models.DateTimeField(
        _("probe lease until"),
        null=True,
        blank=True,
        help_text=_("Probes granted before this moment and never reported are presumed dead."),
    )
    window_start = models.DateTimeField(_("window start"), null=True, blank=True)
    window_calls = models.PositiveIntegerField(_("calls in window"), default=0)
    window_failures = models.PositiveIntegerField(_("failures in window"), default=0)
    previous_window_calls = models.PositiveIntegerField(_("calls in previous window"), default=0)
    previous_window_failures = models.PositiveIntegerField(
        _("failures in previous window"), default=0
    )
    opened_at = models.DateTimeField(_("opened at"), null=True, blank=True)
    last_failure_at = models.DateTimeField(_("last failure at"), null=True, blank=True)
    last_error = models.CharField(_("last error"), max_length=500, blank=True, default="")
    failure_threshold = models.PositiveIntegerField(
        _("failure threshold"),
        null=True,
        blank=True,
        help_text=_("Overrides the settings for this breaker; empty = use the settings."),
    )
    reset_timeout = models.FloatField(
        _("reset timeout (seconds)"),
        null=True,
        blank=True,
        help_text=_("Overrides the settings for this breaker; empty = use the settings."),
    )
    half_open_max_calls = models.PositiveIntegerField(
        _("half-open max calls"),
        null=True,
        blank=True,
        help_text=_("Overrides the settings for this breaker; empty = use the settings."),
    )
    forced_until = models.DateTimeField(
        _("forced until"),
        null=True,
        blank=True,
        help_text=_("When a forced-open or disabled breaker returns to closed; empty = never."),
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    updated_at = models.DateTimeField(_("updated at"), default=timezone.now)

    class Meta:
        verbose_name = _("circuit breaker")
        verbose_name_plural = _("circuit breakers")
        ordering = ("name",)
        indexes = [models.Index(fields=("state",), name="integ_breaker_state_idx")]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    def counts(self) -> dict[str, int]:
        """The counters, as recorded in a transition's snapshot."""
        return {field: getattr(self, field) for field in COUNT_FIELDS}


#: The breaker's states, by their own name.
BreakerState = CircuitBreaker.State

COUNT_FIELDS = (
    "consecutive_failures",
    "total_successes",
    "total_failures",
    "half_open_in_flight",
    "window_calls",
    "window_failures",
    "previous_window_calls",
    "previous_window_failures",
)


class BreakerTransition(models.Model):
    #: The actor of the transitions the breaker makes by itself.
    SYSTEM = "system"

    breaker = models.ForeignKey(
        CircuitBreaker,
        on_delete=models.CASCADE,
        related_name="transitions",
        verbose_name=_("circuit breaker"),
    )
    from_state = models.CharField(_("from state"), max_length=16, choices=BreakerState.choices)
    to_state = models.CharField(_("to state"), max_length=16, choices=BreakerState.choices)
    reason = models.CharField(_("reason"), max_length=500, blank=True, default="")
    actor = models.CharField(
        _("actor"),
        max_length=200,
        default=SYSTEM,
        help_text=_('"system", or who did it: a username, "cli:<user>" or "api:<user>".'),
    )
    snapshot = models.JSONField(
        _("snapshot"), default=dict, blank=True, help_text=_("The counters at the time.")
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)

    class Meta:
        verbose_name = _("breaker transition")
        verbose_name_plural = _("breaker transitions")
        ordering = ("-created_at", "-id")
        indexes = [
            models.Index(fields=("breaker", "-created_at"), name="integ_transition_brk_idx"),
            models.Index(fields=("created_at",), name="integ_transition_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.breaker_id}: {self.from_state} -> {self.to_state} by {self.actor}"
