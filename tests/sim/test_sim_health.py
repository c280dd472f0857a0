"""The virtual devices' health readings: the documented noise levels (docs/simulator.md,
"Noise"), its seeding, and the fault bends, measured on the model directly."""

from __future__ import annotations

import math
import statistics

import pytest

from fleetgate.sim.health import (
    CLIP_SD,
    WINDOW_S,
    Baseline,
    Bends,
    Noise,
    Traffic,
    reading,
)

BASE = Baseline(
    latency_ms=30.0,
    error_rate=0.004,
    cpu_percent=30.0,
    temperature_c=50.0,
    gpu_percent=35.0,
    mem_used_fraction=0.35,
    rps=20.0,
    app_rss_mb=300.0,
)
RAM = 8000.0
N = 4000


NO_BENDS = Bends()


def readings(bends: Bends = NO_BENDS, seed: str = "levels", n: int = N) -> list[dict[str, object]]:
    noise = Noise(seed)
    return [
        reading(noise, BASE, bends, running=True, since_start_s=10.0, mem_total_mb=RAM)
        for _ in range(n)
    ]


def column(rows: list[dict[str, object]], key: str) -> list[float]:
    return [float(r[key]) for r in rows]  # type: ignore[arg-type]


def test_normal_draws_are_standard_and_clipped():
    noise = Noise("normal")
    draws = [noise.normal(1.0) for _ in range(20_000)]
    assert abs(statistics.mean(draws)) < 0.03
    assert statistics.stdev(draws) == pytest.approx(1.0, rel=0.03)
    assert max(map(abs, draws)) <= CLIP_SD


@pytest.mark.parametrize("lam", [0.5, 4.0, 29.0, 200.0])
def test_poisson_counts_have_their_mean_and_variance(lam):
    noise = Noise(f"poisson/{lam}")
    draws = [noise.poisson(lam) for _ in range(8000)]
    assert all(isinstance(k, int) and k >= 0 for k in draws)
    assert statistics.mean(draws) == pytest.approx(lam, rel=0.05)
    assert statistics.variance(draws) == pytest.approx(lam, rel=0.1)
    assert noise.poisson(0.0) == 0


def test_noise_levels_are_the_documented_ones():
    rows = readings()
    latency = column(rows, "latency_ms")
    assert statistics.mean(latency) == pytest.approx(30.0, rel=0.01)
    assert statistics.stdev(latency) / 30.0 == pytest.approx(0.03, rel=0.1)  # 3 %
    assert statistics.stdev(column(rows, "cpu_percent")) == pytest.approx(3.0, rel=0.1)
    assert statistics.stdev(column(rows, "temperature_c")) == pytest.approx(1.0, rel=0.1)
    assert statistics.stdev(column(rows, "gpu_percent")) == pytest.approx(2.5, rel=0.1)
    mem = column(rows, "mem_used_mb")
    assert statistics.mean(mem) == pytest.approx(0.35 * RAM, rel=0.01)
    assert statistics.stdev(mem) == pytest.approx(0.005 * RAM, rel=0.1)  # 40 MB of 8 GB
    # Errors are counted: Poisson over the window's requests.
    errors = column(rows, "error_rate")
    n = BASE.rps * WINDOW_S
    assert statistics.mean(errors) == pytest.approx(0.004, rel=0.05)
    assert statistics.stdev(errors) == pytest.approx(math.sqrt(0.004 / n), rel=0.1)
    assert all(round(e * n) == pytest.approx(e * n, abs=0.01) for e in errors)  # whole counts


def test_a_healthy_device_stays_inside_the_default_bounds_nearly_always():
    """The residue is the realistic false-positive rate of comparing two readings."""
    rows = readings()
    pairs = list(zip(rows[::2], rows[1::2], strict=True))
    latency_over = sum(
        float(b["latency_ms"]) / float(a["latency_ms"]) > 1.2  # type: ignore[arg-type]
        for a, b in pairs
    )
    errors_over = sum(
        float(b["error_rate"]) - float(a["error_rate"]) > 0.01  # type: ignore[arg-type]
        for a, b in pairs
    )
    assert latency_over == 0 and errors_over <= len(pairs) * 0.005


def test_same_seed_same_numbers_other_seed_other_numbers():
    assert readings(n=50) == readings(n=50)
    assert readings(n=50) != readings(seed="other", n=50)


def test_surge_and_errors_bend_the_rate_and_the_latency():
    surged = readings(Bends(surge_latency=0.3, surge_errors=0.01), n=2000)
    assert statistics.mean(column(surged, "latency_ms")) == pytest.approx(39.0, rel=0.01)
    assert statistics.mean(column(surged, "error_rate")) == pytest.approx(0.014, rel=0.05)
    both = readings(Bends(error_rate=0.1, surge_errors=0.02), n=2000)
    assert statistics.mean(column(both, "error_rate")) == pytest.approx(0.12, rel=0.02)


def test_leak_adds_memory_up_to_the_ceiling():
    leaking = readings(Bends(leak_mb=500.0), n=2000)
    assert statistics.mean(column(leaking, "mem_used_mb")) == pytest.approx(
        0.35 * RAM + 500, rel=0.01
    )
    full = readings(Bends(leak_mb=1e9), n=5)
    assert column(full, "mem_used_mb") == [0.98 * RAM] * 5


def test_traffic_counts_requests_at_the_reading_rate():
    traffic = Traffic(started=100.0)
    traffic.advance(110.0, rps=20.0, error_rate=0.1, latency_ms=50.0)
    traffic.advance(105.0, rps=20.0, error_rate=0.1, latency_ms=50.0)  # a clock never goes back
    traffic.advance(120.0, rps=20.0, error_rate=0.0, latency_ms=50.0)
    assert (traffic.requests, traffic.errors) == (400.0, 20.0)
    assert traffic.latency_sum_s == pytest.approx(20.0)
