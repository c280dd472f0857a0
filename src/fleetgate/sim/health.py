"""Synthetic but realistic health readings for virtual devices.

Contract:
- Each device draws a ``Baseline`` once from its seed: error rate 0.2–0.5 %, latency 20–40 ms,
  CPU 20–40 %, temperature 45–60 °C, GPU 20–50 % on GPU boards, memory use per hardware profile.
- Each reading adds small noise (latency ±5 %, CPU ±3, temperature ±1 °C, error rate ±0.05
  points) from a per-device ``Noise`` stream, so a healthy device stays far inside the policy's
  bounds (error increase ≤ 1 point, latency ratio ≤ 1.2) reading after reading, and the same
  seed and call order give the same numbers.
- Faults bend the reading (``errors`` sets the error rate, ``latency`` multiplies latency,
  ``hot`` sets the temperature, ``crash-loop``/``start-fail`` take the app down and make
  restarts climb); the device model decides which faults apply.

``Noise`` is a splitmix64 stream: 8 bytes of state per device instead of a Mersenne Twister's
2.5 KB, which matters for 10,000 devices in one process.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

MASK64 = (1 << 64) - 1


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


@dataclass(frozen=True, slots=True)
class Baseline:
    latency_ms: float
    error_rate: float
    cpu_percent: float
    temperature_c: float
    gpu_percent: float | None
    mem_used_fraction: float

    @classmethod
    def draw(cls, noise: Noise, *, gpu: bool, mem_range: tuple[float, float]) -> Baseline:
        return cls(
            latency_ms=noise.uniform(20.0, 40.0),
            error_rate=noise.uniform(0.002, 0.005),
            cpu_percent=noise.uniform(20.0, 40.0),
            temperature_c=noise.uniform(45.0, 60.0),
            gpu_percent=noise.uniform(20.0, 50.0) if gpu else None,
            mem_used_fraction=noise.uniform(*mem_range),
        )


@dataclass(frozen=True, slots=True)
class Bends:
    """What the applicable faults do to one reading (``None`` = no change)."""

    error_rate: float | None = None
    latency_factor: float = 1.0
    temperature_c: float | None = None
    crash_loop: bool = False  # starts, then keeps crashing
    start_failed: bool = False  # never comes up


def reading(
    noise: Noise,
    base: Baseline,
    bends: Bends,
    *,
    running: bool,
    since_start_s: float,
    mem_total_mb: float,
) -> dict[str, object]:
    """The health fields other than identity/disk/release, as the agent would report them."""
    cpu = min(100.0, max(0.0, base.cpu_percent + noise.uniform(-3.0, 3.0)))
    temp = base.temperature_c + noise.uniform(-1.0, 1.0)
    if bends.temperature_c is not None:
        temp = bends.temperature_c + noise.uniform(-0.5, 0.5)
    mem_used = mem_total_mb * min(0.95, base.mem_used_fraction + noise.uniform(-0.01, 0.01))
    gpu = None
    if base.gpu_percent is not None:
        gpu = min(100.0, max(0.0, base.gpu_percent + noise.uniform(-4.0, 4.0)))
    out: dict[str, object] = {
        "cpu_percent": round(cpu, 2),
        "mem_used_mb": round(mem_used, 1),
        "mem_total_mb": mem_total_mb,
        "gpu_percent": None if gpu is None else round(gpu, 2),
        "temperature_c": round(temp, 2),
    }
    if not running:
        out.update(app_up=False, latency_ms=None, error_rate=None, restarts=0, crash_loop=False)
        return out
    latency = base.latency_ms * bends.latency_factor * (1.0 + noise.uniform(-0.05, 0.05))
    errors = max(0.0, base.error_rate + noise.uniform(-0.0005, 0.0005))
    if bends.error_rate is not None:
        errors = min(1.0, max(0.0, bends.error_rate + noise.uniform(-0.0005, 0.0005)))
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
    out.update(
        app_up=app_up,
        latency_ms=round(latency, 2),
        error_rate=round(errors, 5),
        restarts=restarts,
        crash_loop=crash_loop,
    )
    return out
