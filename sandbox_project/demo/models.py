"""The sandbox's demo shop: orders paid through Stripe, and a record of GitHub pushes."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", _("pending")
        PAID = "paid", _("paid")
        PAYMENT_FAILED = "payment_failed", _("payment failed")

    reference = models.CharField(_("reference"), max_length=64, unique=True)
    amount = models.PositiveIntegerField(_("amount"), help_text=_("In the currency's minor unit."))
    currency = models.CharField(_("currency"), max_length=3, default="usd")
    status = models.CharField(
        _("status"), max_length=20, choices=Status.choices, default=Status.PENDING
    )
    payment_intent_id = models.CharField(
        _("Stripe PaymentIntent"), max_length=255, blank=True, default="", db_index=True
    )
    paid_at = models.DateTimeField(_("paid at"), null=True, blank=True)
    created_at = models.DateTimeField(_("created at"), auto_now_add=True)

    class Meta:
        verbose_name = _("order")
        verbose_name_plural = _("orders")
        ordering = ("-created_at",)

    def __str__(self) -> str:
        return f"Order {self.reference} ({self.status})"


class GitHubPush(models.Model):
    delivery_id = models.CharField(_("delivery id"), max_length=255, unique=True)
    repository = models.CharField(_("repository"), max_length=255)
    ref = models.CharField(_("ref"), max_length=255)
    before = models.CharField(_("before"), max_length=40, blank=True, default="")
    after = models.CharField(_("after"), max_length=40, blank=True, default="")
    pusher = models.CharField(_("pusher"), max_length=255, blank=True, default="")
    commit_count = models.PositiveIntegerField(_("commits"), default=0)
    deleted = models.BooleanField(_("deleted"), default=False)
    head_commit_message = models.TextField(_("head commit message"), blank=True, default="")
    pushed_at = models.DateTimeField(_("recorded at"), auto_now_add=True)

    class Meta:
        verbose_name = _("GitHub push")
        verbose_name_plural = _("GitHub pushes")
        ordering = ("-pushed_at",)

    def __str__(self) -> str:
        return f"{self.repository} {self.ref} -> {self.after[:7]}"


class Subscription(models.Model):
    """A Stripe subscription as the newest ``customer.subscription.*`` event says it is: kept by
    an ordered handler (``sync_subscription``), so an older event arriving late cannot roll it
    back."""

    class Status(models.TextChoices):
        INCOMPLETE = "incomplete", _("incomplete")
        INCOMPLETE_EXPIRED = "incomplete_expired", _("incomplete, expired")
        TRIALING = "trialing", _("trialing")
        ACTIVE = "active", _("active")
        PAST_DUE = "past_due", _("past due")
        CANCELED = "canceled", _("canceled")
        UNPAID = "unpaid", _("unpaid")
        PAUSED = "paused", _("paused")

    stripe_id = models.CharField(_("Stripe subscription"), max_length=255, unique=True)
    customer = models.CharField(_("Stripe customer"), max_length=255, blank=True, default="")
    status = models.CharField(_("status"), max_length=20, choices=Status.choices)
    cancel_at_period_end = models.BooleanField(_("cancels at period end"), default=False)
    current_period_end = models.DateTimeField(_("current period ends"), null=True, blank=True)
    event_id = models.CharField(
        _("from event"), max_length=255, help_text=_("The Stripe event this state comes from.")
    )
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("subscription")
        verbose_name_plural = _("subscriptions")
        ordering = ("-updated_at",)

    def __str__(self) -> str:
        return f"{self.stripe_id} ({self.status})"
