"""No-op handlers for the benchmark's endpoint, found by the webhooks app's autodiscovery: one
for every event (case (d)), and two more for ``bench.three`` events (case (g): three handlers
per event, each in its own transaction with its run)."""

from webhooks import on


@on("bench", "*")  # bench.settings.BENCH_ENDPOINT
def noop(event) -> None:
    """Does nothing: the benchmark measures the machinery around handlers."""


#: The event type of case (g), whose events have three handlers: ``noop`` and these two.
THREE_HANDLERS_TYPE = "bench.three"


@on("bench", THREE_HANDLERS_TYPE)
def noop_second(event) -> None:
    """Case (g)'s second handler."""


@on("bench", THREE_HANDLERS_TYPE)
def noop_third(event) -> None:
    """Case (g)'s third handler."""


#: Case (h): three handlers ordered by the object's id, by the version in its metadata (one
#: (handler, key) row locked and compared in each handler's transaction).
ORDERED = {"ordering_key": "data.object.id", "ordering_version": "data.object.metadata.version"}


@on("bench-ordered", "*", **ORDERED)  # bench.settings.ORDERED_ENDPOINT
def ordered_first(event) -> None:
    """Case (h)'s first ordered handler."""


@on("bench-ordered", "*", **ORDERED)
def ordered_second(event) -> None:
    """Case (h)'s second ordered handler."""


@on("bench-ordered", "*", **ORDERED)
def ordered_third(event) -> None:
    """Case (h)'s third ordered handler."""
