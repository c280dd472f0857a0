"""Synthetic but realistic health readings for virtual devices, app metrics included.

Contract:
- Each device draws a ``Baseline`` once from its seed: error rate 0.2–0.5 %, latency 20–40 ms,
  CPU 20–40 %, temperature 45–60 °C, GPU 20–50 % on GPU boards, memory use per hardware
  profile, app traffic 10–30 requests/s, app resident memory 150–600 MiB.
- Each reading adds noise from a per-device ``Noise`` stream, at the levels a real agent's
  readings show (docs/simulator.md, "Noise"): latency × (1 + N(0, 3 %)); the error rate is a
  count, errors ~ Poisson(p × n) over the n requests of one counter window (``WINDOW_S`` of the
  device's traffic) divided by n; CPU + N(0, 3) points; memory + N(0, 0.5 % of RAM);
  temperature + N(0, 1) °C; GPU + N(0, 2.5) points. Normal draws are clipped at ±3 σ, so a
  healthy device stays inside the default policy's bounds (error increase ≤ 1 point, latency
  ratio ≤ 1.2) with a probability that is a property of the noise, not a certainty. The same
  seed and call order give the same numbers.
- Faults bend the reading (``Bends``): ``errors`` sets the error rate, ``latency`` multiplies
  latency, ``surge`` adds to both, ``hot`` sets the temperature, ``leak`` adds memory,
  ``crash-loop``/``start-fail`` take the app down and make restarts climb, ``silent`` answers
  with every reading missing; the device model decides which faults apply when.
- ``Traffic`` keeps the app's counters between readings: ``app_metrics`` returns what the app's
  ``/metrics`` page would show (the demo app's names, plus a latency summary), consistent with
  the reading: counters grow by the device's traffic at the reported error rate, the summary's
  quantiles are those of a log-normal request latency whose mean is the reported latency.
  Counters restart at zero when the app restarts (a switch of release).

``Noise`` is a splitmix64 stream: 8 bytes of state per device instead of a Mersenne Twister's
2.5 KB, which matters for 10,000 devices in one process.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

MASK64 = (1 << 64) - 1
WINDOW_S = 300.0  # a 5-minute counter window (the agent's default is 100 s: see docs/simulator.md)
LATENCY_SD = 0.03  # relative
CPU_SD = 3.0  # percent points
MEM_SD = 0.005  # fraction of RAM
TEMP_SD = 1.0  # °C
GPU_SD = 2.5  # percent points
CLIP_SD = 3.0  # ±9 % latency at most: two readings never differ by the 1.2x the policy fails
MEM_CEILING = 0.98  # of RAM: beyond this the kernel's OOM killer would act (not modelled)
# Quantiles of a log-normal latency with σ = 0.4, relative to its mean (exp(σ²/2) apart from the
# median): what a busy inference service's summary shows.
LATENCY_QUANTILES = (("0.5", 0.923), ("0.95", 1.779), ("0.99", 2.344))
MIB = 1024 * 1024


class Noise:
    """A tiny deterministic RNG (splitmix64)."""

    __slots__ = ("state",)

    def __init__(self, seed_text: str) -> None:
        self.state = int.from_bytes(
            hashlib.blake2b(seed_text.encode(), digest_size=8).digest(), "big"
        )

    def random(self) -> float:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        z ^= z >> 31
        return (z >> 11) / float(1 << 53)

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def normal(self, sd: float) -> float:
        """N(0, sd²) clipped at ±``CLIP_SD`` σ (Box–Muller)."""
        u1 = 1.0 - self.random()  # (0, 1]: log is finite
        z = math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * self.random())
        return sd * max(-CLIP_SD, min(CLIP_SD, z))

    def poisson(self, lam: float) -> int:
        """Knuth's product of uniforms below 30 (exact), a rounded normal above it."""
        if lam <= 0:
            return 0
        if lam >= 30:
            return max(0, round(lam + math.sqrt(lam) * self.normal(1.0)))
        limit, k, p = math.exp(-lam), 0, self.random()
        while p > limit:
            k += 1
            p *= self.random()
        return k


@dataclass(frozen=True, slots=True)
class Baseline:
    latency_ms: float
    error_rate: float
    cpu_percent: float
    temperature_c: float
    gpu_percent: float | None
    mem_used_fraction: float
    rps: float
    app_rss_mb: float

    @classmethod
    def draw(cls, noise: Noise, *, gpu: bool, mem_range: tuple[float, float]) -> Baseline:
        return cls(
            latency_ms=noise.uniform(20.0, 40.0),
            error_rate=noise.uniform(0.002, 0.005),
            cpu_percent=noise.uniform(20.0, 40.0),
            temperature_c=noise.uniform(45.0, 60.0),
            gpu_percent=noise.uniform(20.0, 50.0) if gpu else None,
            mem_used_fraction=noise.uniform(*mem_range),
            rps=noise.uniform(10.0, 30.0),
            app_rss_mb=noise.uniform(150.0, 600.0),
        )


@dataclass(frozen=True, slots=True)
class Bends:
    """What the applicable faults do to one reading (``None`` = no change)."""

    error_rate: float | None = None
    latency_factor: float = 1.0
    temperature_c: float | None = None
    crash_loop: bool = False  # starts, then keeps crashing
    start_failed: bool = False  # never comes up
    surge_latency: float = 0.0  # relative latency increase of a fleet-wide surge
    surge_errors: float = 0.0  # absolute error-rate increase of a surge
    leak_mb: float = 0.0  # memory a leak has taken so far
    silent: bool = False  # answers, but measures nothing


class Traffic:
    """The app's counters since it last started: requests, errors, summed latency."""

    __slots__ = ("errors", "last", "latency_sum_s", "requests", "started")

    def __init__(self, started: float) -> None:
        self.started = self.last = started
        self.requests = self.errors = self.latency_sum_s = 0.0

    def advance(self, now: float, rps: float, error_rate: float, latency_ms: float) -> None:
        """Count the requests since the last reading at this reading's rate and latency."""
        n = rps * max(0.0, now - self.last)
        self.last = max(self.last, now)
        self.requests += n
        self.errors += n * error_rate
        self.latency_sum_s += n * latency_ms / 1000.0


def app_metrics(
    traffic: Traffic, base: Baseline, latency_ms: float, leak_mb: float
) -> dict[str, float]:
    """The app's ``/metrics`` page as the agent reports it (``core.model.metric_key`` keys)."""
    out: dict[str, float] = {
        "app_requests_total": float(math.floor(traffic.requests)),
        "app_errors_total": float(math.floor(traffic.errors)),
        "app_request_latency_ms": round(latency_ms, 2),
        "app_up": 1.0,
    }
    mean_s = latency_ms / 1000.0
    for q, factor in LATENCY_QUANTILES:
        out[f'inference_latency_seconds{{quantile="{q}"}}'] = round(mean_s * factor, 6)
    out["inference_latency_seconds_sum"] = round(traffic.latency_sum_s, 3)
    out["inference_latency_seconds_count"] = float(math.floor(traffic.requests))
    out["process_resident_memory_bytes"] = float(round((base.app_rss_mb + leak_mb) * MIB))
    return out


def reading(
    noise: Noise,
    base: Baseline,
    bends: Bends,
    *,
    running: bool,
    since_start_s: float,
    mem_total_mb: float,
    traffic: Traffic | None = None,
    now: float = 0.0,
) -> dict[str, object]:
    """The health fields other than identity/disk/release, as the agent would report them,
    with ``metrics`` (the app's, empty while it is down). ``traffic`` is advanced to ``now``."""
    cpu = min(100.0, max(0.0, base.cpu_percent + noise.normal(CPU_SD)))
    temp = base.temperature_c + noise.normal(TEMP_SD)
    if bends.temperature_c is not None:
        temp = bends.temperature_c + noise.normal(TEMP_SD)
    used_fraction = base.mem_used_fraction + noise.normal(MEM_SD)
    mem_used = min(MEM_CEILING * mem_total_mb, mem_total_mb * used_fraction + bends.leak_mb)
    gpu = None
    if base.gpu_percent is not None:
        gpu = min(100.0, max(0.0, base.gpu_percent + noise.normal(GPU_SD)))
    out: dict[str, object] = {
        "cpu_percent": round(cpu, 2),
        "mem_used_mb": round(mem_used, 1),
        "mem_total_mb": mem_total_mb,
        "gpu_percent": None if gpu is None else round(gpu, 2),
        "temperature_c": round(temp, 2),
    }
    if not running:
        out.update(
            app_up=False, latency_ms=None, error_rate=None, restarts=0, crash_loop=False, metrics={}
        )
        return _silenced(out) if bends.silent else out
    latency = base.latency_ms * bends.latency_factor * (1.0 + bends.surge_latency)
    latency *= 1.0 + noise.normal(LATENCY_SD)
    rate = base.error_rate if bends.error_rate is None else bends.error_rate
    rate = min(1.0, max(0.0, rate + bends.surge_errors))
    requests = max(1.0, base.rps * WINDOW_S)
    errors = min(1.0, noise.poisson(rate * requests) / requests)
    restarts, crash_loop, app_up = 0, False, True
    if bends.start_failed:
        # The supervisor restarts it with backoff (0.5 s, 1 s, 2 s …): ≥ 3 within seconds.
        restarts = 3 + int(since_start_s / 2.0)
        crash_loop, app_up = True, False
        latency, errors = base.latency_ms * 10, 1.0
    elif bends.crash_loop:
        restarts = 3 + int(since_start_s / 2.0)
        crash_loop = True
        app_up = noise.random() < 0.3  # up between crashes now and then
        errors = max(errors, 0.3 + noise.uniform(-0.05, 0.05))
        latency *= 4
    metrics: dict[str, float] = {}
    if traffic is not None and not bends.start_failed:
        traffic.advance(now, base.rps, errors, latency)
        if app_up:  # the agent scrapes a live app only
            metrics = app_metrics(traffic, base, latency, bends.leak_mb)
    out.update(
        app_up=app_up,
        latency_ms=round(latency, 2),
        error_rate=round(errors, 6),
        restarts=restarts,
        crash_loop=crash_loop,
        metrics=metrics,
    )
    return _silenced(out) if bends.silent else out


def _silenced(out: dict[str, object]) -> dict[str, object]:
    """A device that answers but measures nothing: every reading ``None``, no app metrics."""
    for key in ("cpu_percent", "mem_used_mb", "mem_total_mb", "gpu_percent", "temperature_c"):
        out[key] = None
    out.update(latency_ms=None, error_rate=None, metrics={})
    return out
