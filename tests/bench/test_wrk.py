"""The arithmetic ``bench/wrk.py`` applies to wrk's latency histogram (no wrk needed)."""

import random

import pytest

from bench.processes import BenchError
from bench.wrk import merge, observed_histogram, percentile


def wrk_corrected(observed: dict[int, int], duration_us: int, connections: int) -> dict[int, int]:
    """What wrk 4.1's ``done()`` sees: ``stats_correct`` (src/stats.c) applied to the recorded
    latencies, read back as ``stats_value_at`` does (from the smallest recorded value up)."""
    requests = sum(observed.values())
    expected = duration_us // (requests // connections)
    data = dict(observed)
    for n in range(expected * 2, max(observed) + 1):
        count, m = observed.get(n, 0), n - expected  # wrk reads data[n] before it changes
        while count and m > expected:
            data[m] = data.get(m, 0) + count
            m -= expected
    return {us: count for us, count in data.items() if count and us >= min(observed)}


@pytest.mark.parametrize("seed", range(5))
def test_observed_histogram_removes_wrks_coordinated_omission_samples(seed):
    rng = random.Random(seed)
    connections = 16
    # Mostly 2-8 ms, with a tail up to 200 ms: well past 2x the mean interval, so wrk adds
    # samples, some of them below the smallest latency recorded.
    latencies = [rng.randint(2000, 8000) for _ in range(3000)]
    latencies += [rng.randint(20_000, 200_000) for _ in range(60)]
    observed = merge([{us: 1} for us in latencies])
    duration_us = 3_000_000
    corrected = wrk_corrected(observed, duration_us, connections)
    assert sum(corrected.values()) > len(latencies)

    assert (
        observed_histogram(
            corrected, duration_us, len(latencies), connections, recorded=len(latencies)
        )
        == observed
    )


def test_observed_histogram_refuses_a_histogram_that_does_not_add_up():
    corrected = {1000: 5, 50_000: 1}
    with pytest.raises(BenchError, match="does not add up"):
        observed_histogram(corrected, 1_000_000, 6, 1, recorded=7)


def test_percentile_is_nearest_rank_over_the_histogram():
    histogram = {1000: 197, 5000: 2, 90_000: 1}
    assert percentile(histogram, 50) == 1000
    assert percentile(histogram, 99) == 5000
    assert percentile(histogram, 100) == 90_000
    assert percentile({}, 99) == 0.0
