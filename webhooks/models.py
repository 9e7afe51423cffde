"""The stored webhook event: exactly what arrived, and where its processing stands."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .registry import HANDLER_NAME_MAX_CHARS

if TYPE_CHECKING:
    from .ordering import OrderingDecision


class WebhookEvent(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received", _("received")
        PROCESSING = "processing", _("processing")
        PROCESSED = "processed", _("processed")
        IGNORED = "ignored", _("ignored")
        FAILED = "failed", _("failed")

    class Source(models.TextChoices):
        DELIVERY = "delivery", _("delivered by the vendor")
        RECONCILE = "reconcile", _("fetched from the vendor's API (reconcile)")

    endpoint = models.CharField(_("endpoint"), max_length=100)
    event_id = models.CharField(_("event id"), max_length=255, help_text=_("The vendor's id."))
    event_type = models.CharField(_("event type"), max_length=255, blank=True, default="")
    body = models.BinaryField(
        _("body"), help_text=_("The exact bytes received, so the signature can be re-verified.")
    )
    payload = models.JSONField(_("payload"), null=True, blank=True)
    headers = models.JSONField(
        _("headers"), default=dict, blank=True, help_text=_("Allow-listed request headers only.")
    )
    content_digest = models.BinaryField(
        _("signed content digest"),
        null=True,
        blank=True,
        editable=False,
        help_text=_(
            "SHA-256 of what the signature covers, for schemes whose event id is outside it "
            "(GitHub): the same signed content under another id is a replay."
        ),
    )
    source = models.CharField(
        _("source"),
        max_length=20,
        choices=Source.choices,
        default=Source.DELIVERY,
        db_default=Source.DELIVERY,
        help_text=_(
            "How it arrived: a signed delivery, or listed from the vendor's API by "
            "reconcile_webhooks (an authenticated call: no signature to check)."
        ),
    )
    status = models.CharField(
        _("status"), max_length=20, choices=Status.choices, default=Status.RECEIVED
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True, default="")
    received_at = models.DateTimeField(_("received at"), default=timezone.now)
    occurred_at = models.DateTimeField(_("occurred at"), null=True, blank=True)
    last_attempt_at = models.DateTimeField(_("last attempt at"), null=True, blank=True)
    next_attempt_at = models.DateTimeField(
        _("next attempt at"),
        null=True,
        blank=True,
        help_text=_("When a retry is due; a task delivered earlier leaves the event alone."),
    )
    processed_at = models.DateTimeField(
        _("processed at"),
        null=True,
        blank=True,
        help_text=_("When it ended processed; empty for an ignored event."),
    )
    requeued_at = models.DateTimeField(
        _("requeued at"),
        null=True,
        blank=True,
        help_text=_(
            "When the sweeper last published this event's task again; it waits before doing so "
            "again, since that message may still be queued."
        ),
    )

    #: Set while an ordered handler runs: its ``webhooks.ordering.OrderingDecision`` for this
    #: event (``event.ordering.stale`` is true for a stale event delivered with
    #: ``stale="deliver"``); None for an unordered handler. Not a database field.
    ordering: OrderingDecision | None = None

    class Meta:
        verbose_name = _("webhook event")
        verbose_name_plural = _("webhook events")
        ordering = ("-received_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=("endpoint", "event_id"), name="webhooks_event_endpoint_event_id_uniq"
            ),
            # Partial: events of schemes that sign their id (Stripe, Standard Webhooks) have no
            # digest and no entry in this index.
            models.UniqueConstraint(
                fields=("endpoint", "content_digest"),
                condition=models.Q(content_digest__isnull=False),
                name="webhooks_event_endpoint_digest_uniq",
            ),
        ]
        # No (endpoint, ...) index beside the unique one: a filter on endpoint uses its leading
        # column, and the receive statement's cached (generic) plan can only look a duplicate up
        # through it (migration 0002 says why).
        indexes = [
            models.Index(fields=("status", "received_at"), name="webhooks_ev_status_recv_idx"),
            models.Index(fields=("event_type",), name="webhooks_ev_type_idx"),
            models.Index(fields=("received_at", "id"), name="webhooks_ev_recv_id_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.endpoint}:{self.event_id} ({self.status})"


class ProcessingAttempt(models.Model):
    """One processing attempt of an event that recorded an outcome: written by
    ``webhooks.processing`` in the same transaction as the event's outcome (one INSERT per
    attempt), so it exists exactly when that outcome committed.

    An attempt whose worker died (or whose outcome could not be written) has no row; the event's
    ``attempts`` still counts it, and the admin shows the missing numbers as "no outcome
    recorded". When that lost attempt was the last allowed, the claim that ends the event
    ``failed`` writes a ``lost`` row for it. Rows go with their event (prune); a replay keeps
    the latest ``ATTEMPTS_KEPT_PER_EVENT`` of an event's rows (``webhooks.services``). It has no
    ``handler`` column: an attempt may run several handlers, each of which records its outcome
    in its ``HandlerRun``; the attempt's ``error`` names the handler that failed.
    """

    class Outcome(models.TextChoices):
        PROCESSED = "processed", _("processed")
        IGNORED = "ignored", _("ignored")
        RETRY = "retry", _("failed, retry scheduled")
        FAILED = "failed", _("failed")
        LOST = "lost", _("did not finish (worker lost)")

    event = models.ForeignKey(
        WebhookEvent,
        on_delete=models.CASCADE,
        related_name="processing_attempts",
        verbose_name=_("event"),
        db_index=False,  # the (event, started_at) index leads with it
    )
    number = models.PositiveIntegerField(
        _("attempt"), help_text=_("The event's attempt count when it ran (1 after a replay).")
    )
    started_at = models.DateTimeField(_("started at"))
    finished_at = models.DateTimeField(
        _("finished at"), null=True, blank=True, help_text=_("Empty for a lost attempt.")
    )
    outcome = models.CharField(_("outcome"), max_length=20, choices=Outcome.choices)
    error = models.TextField(
        _("error"), blank=True, default="", help_text=_("As in the event's last error; bounded.")
    )

    class Meta:
        verbose_name = _("processing attempt")
        verbose_name_plural = _("processing attempts")
        ordering = ("started_at", "id")
        indexes = [
            models.Index(fields=("event", "started_at"), name="webhooks_att_event_start_idx"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of event {self.event_id} ({self.outcome})"

    @property
    def duration(self) -> timedelta | None:
        if self.finished_at is None:
            return None
        return self.finished_at - self.started_at


class HandlerRun(models.Model):
    """One handler's run for one event: where that (event, handler) pair stands.

    Written by ``webhooks.processing`` in the handler's own transaction, with the handler's
    writes, so a ``processed`` run is one whose effects committed. A run that fails is retried
    alone (the event's backoff and attempt limit); a run that ended ``processed``, ``ignored`` or
    ``skipped`` is not run again unless an operator replays it. Events stored before runs
    existed (migration 0007) have none: they are processed as before, every matching handler at
    once, and get runs from their next attempt on.
    """

    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        PROCESSING = "processing", _("processing (retry due)")
        PROCESSED = "processed", _("processed")
        IGNORED = "ignored", _("ignored")
        SKIPPED = "skipped", _("skipped")
        FAILED = "failed", _("failed")

    event = models.ForeignKey(
        WebhookEvent,
        on_delete=models.CASCADE,
        related_name="handler_runs",
        verbose_name=_("event"),
        db_index=False,  # the unique (event, handler) index leads with it
    )
    handler = models.CharField(
        _("handler"),
        max_length=HANDLER_NAME_MAX_CHARS,
        help_text=_("The handler's dotted name (module.qualname)."),
    )
    status = models.CharField(
        _("status"), max_length=20, choices=Status.choices, default=Status.PENDING
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    last_error = models.TextField(_("last error"), blank=True, default="")
    next_attempt_at = models.DateTimeField(_("next attempt at"), null=True, blank=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    finished_at = models.DateTimeField(_("finished at"), null=True, blank=True)

    class Meta:
        verbose_name = _("handler run")
        verbose_name_plural = _("handler runs")
        ordering = ("event", "id")
        constraints = [
            models.UniqueConstraint(
                fields=("event", "handler"), name="webhooks_run_event_handler_uniq"
            ),
        ]
        indexes = [
            # The changelist's "failed runs of a handler" filter.
            models.Index(
                fields=("handler", "event"),
                condition=models.Q(status="failed"),
                name="webhooks_run_failed_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} for event {self.event_id} ({self.status})"

    @property
    def duration(self) -> timedelta | None:
        """How long the latest run of the handler took, its transaction's commit aside."""
        if self.finished_at is None or self.started_at is None:
            return None
        return self.finished_at - self.started_at


class OrderingState(models.Model):
    """The newest version applied by an ordered handler for one key (``webhooks.ordering``).

    One row per (handler, key), created by the first event of the key; its row lock serialises
    the runs of that key across all workers, in the handler's transaction. ``version`` holds a
    number, or a time as Unix seconds (``version_kind`` says which), so one column compares both.
    """

    class VersionKind(models.TextChoices):
        NUMBER = "number", _("number")
        TIME = "time", _("time")

    handler = models.CharField(
        _("handler"),
        max_length=HANDLER_NAME_MAX_CHARS,
        help_text=_("The handler's dotted path, as its runs name it."),
    )
    key = models.CharField(_("ordering key"), max_length=255)
    version = models.DecimalField(
        _("newest version applied"),
        max_digits=32,
        decimal_places=6,
        null=True,
        blank=True,
        help_text=_("Empty until an event of the key is applied."),
    )
    version_kind = models.CharField(
        _("version kind"), max_length=10, choices=VersionKind.choices, blank=True, default=""
    )
    event_id = models.CharField(
        _("applied by event"),
        max_length=255,
        blank=True,
        default="",
        help_text=_("The vendor's id of the event that applied the newest version."),
    )
    applied_at = models.DateTimeField(_("applied at"), null=True, blank=True)

    class Meta:
        verbose_name = _("ordering state")
        verbose_name_plural = _("ordering states")
        constraints = [
            models.UniqueConstraint(
                fields=("handler", "key"), name="webhooks_ordering_handler_key_uniq"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.handler} [{self.key}] at {self.version} ({self.event_id})"
