"""The chaos soak's ledger: a handler for the soak's endpoint that records its effect in a table
with a unique constraint on the event id (in the handler's transaction, so a rolled-back attempt
leaves none) and every invocation in an append-only journal that nothing rolls back.

Installed only by ``bench.chaos_settings``. Light on purpose (settings import ``ENDPOINT``).
"""

#: The webhook endpoint of the soak (Stripe's scheme), the only one the ledger's handler serves.
ENDPOINT = "chaos"
