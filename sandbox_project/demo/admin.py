from django.contrib import admin

from .models import GitHubPush, Order, Subscription


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("reference", "amount", "currency", "status", "payment_intent_id", "paid_at")
    list_filter = ("status", "currency")
    search_fields = ("reference", "payment_intent_id")
    readonly_fields = ("paid_at", "created_at")


@admin.register(GitHubPush)
class GitHubPushAdmin(admin.ModelAdmin):
    list_display = ("repository", "ref", "after", "pusher", "commit_count", "deleted", "pushed_at")
    list_filter = ("repository", "deleted")
    search_fields = ("repository", "ref", "after", "delivery_id")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Subscription)
class SubscriptionAdmin(admin.ModelAdmin):
    """Kept by the ordered handler ``sync_subscription``: read-only here."""

    list_display = ("stripe_id", "customer", "status", "current_period_end", "event_id")
    list_filter = ("status",)
    search_fields = ("stripe_id", "customer", "event_id")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
