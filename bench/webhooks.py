"""A no-op handler for the benchmark's endpoint, found by the webhooks app's autodiscovery."""

from webhooks import on


@on("bench", "*")  # bench.settings.BENCH_ENDPOINT
def noop(event) -> None:
    """Does nothing: the benchmark measures the machinery around handlers."""
