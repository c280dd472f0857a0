"""How often does each canary judge flag a canary, with and without a real regression?

Simulates, per trial, one canary device and ``--controls`` matched control devices (default
5; same hardware and group, so only a modest device-to-device difference), each sampled every
30 s: a pre-deployment window of ``--baseline`` samples (default 30, as long as the soak), then
the 15-minute canary soak of 30 samples. The controls' series are pooled into one control
series per metric. Cases:

- ``none``: the release changes nothing.
- ``surge``: nothing changes, but in the second half of the soak a fleet-wide surge hits every
  device, canary and control alike: latency x1.3, error rate +1 point. The baseline window is
  before it.
- ``errors+1pp`` / ``errors+3pp``: the canary's error rate rises by 1 / 3 points.
- ``latency+15%`` / ``latency+40%``: the canary's latency rises by 15 % / 40 %.
- ``leak``: the canary's memory grows by 10 MB a minute from activation (150 MB by the end).
- ``silent``: the canary's app stays up but it reports no metric during the soak.

Judges:

- ``threshold``: the judge fleetgate had, ``core.health.evaluate_health`` on the last sample
  before the deployment (the baseline) vs the last sample of the soak, ``HealthPolicy()``
  defaults; flagged = not HEALTHY.
- ``analysis``: ``core.analysis.judge``, the canary's series vs the pooled controls' over
  the soak, adjusted for their difference before the deployment (``--plain``: without that
  adjustment); flagged = FAIL or INCONCLUSIVE.

Noise, per device (``NOISE``; levels as a fleet shows them, not fitted to any target):
latency lognormal, median 40 ms x a device factor (lognormal, 10 % spread between matched
devices), 15 % CV per sample; error rate binomial over 600 requests per 30 s (20 req/s), the
device's rate 0.5 % x a lognormal factor (30 % spread); CPU 20-40 % per device, +-3 points per
sample; memory 2,000 MB x a 5 % device factor, 10 MB per sample; temperature 45-60 C per device,
1 C per sample; no restarts. Devices differ (the device factors) because no two devices serve
the same load; that is what the pre-deployment adjustment is for. ``--autocorr PHI`` makes
the per-sample noise of latency, CPU, memory and temperature an AR(1) series (real 30 s
windows are not independent).

Prints one line per case and judge:
``case=<case> judge=<threshold|analysis> trials=<N> flagged=<fraction not passed>``.
Seeded and deterministic: every case draws from its own stream of ``--seed``.

Usage: ``.venv/bin/python bench/analysis_bench.py [--trials 500] [--seed 1] [--controls 5]
[--baseline 30] [--plain] [--autocorr 0] [--jobs N]`` (cases run in parallel, ``--jobs``
processes; the figures do not depend on it).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from fleetgate.core.analysis import judge, judge_relative
from fleetgate.core.health import DeviceHealth, evaluate_health
from fleetgate.core.model import HealthSample
from fleetgate.core.policy import HealthPolicy

INTERVAL_S = 30.0
SOAK_SAMPLES = 30  # 15 minutes at 30 s
CASES = (
    "none",
    "surge",
    "errors+1pp",
    "errors+3pp",
    "latency+15%",
    "latency+40%",
    "leak",
    "silent",
)


@dataclass(frozen=True, slots=True)
class Noise:
    latency_ms: float = 40.0
    latency_cv: float = 0.15  # per sample
    latency_device_spread: float = 0.10  # between matched devices (lognormal sigma)
    error_rate: float = 0.005
    error_device_spread: float = 0.30
    requests_per_sample: int = 600  # 20 req/s over 30 s
    cpu_range: tuple[float, float] = (20.0, 40.0)
    cpu_sd: float = 3.0
    mem_mb: float = 2000.0
    mem_device_spread: float = 0.05
    mem_sd: float = 10.0
    temp_range: tuple[float, float] = (45.0, 60.0)
    temp_sd: float = 1.0


NOISE = Noise()


@dataclass(frozen=True, slots=True)
class Effect:
    """What the release (canary only) or the fleet (everyone) does to the readings."""

    latency_factor: float = 1.0
    error_pp: float = 0.0
    leak_mb_per_min: float = 0.0
    silent: bool = False


RELEASE: dict[str, Effect] = {
    "none": Effect(),
    "surge": Effect(),
    "errors+1pp": Effect(error_pp=0.01),
    "errors+3pp": Effect(error_pp=0.03),
    "latency+15%": Effect(latency_factor=1.15),
    "latency+40%": Effect(latency_factor=1.40),
    "leak": Effect(leak_mb_per_min=10.0),
    "silent": Effect(silent=True),
}
SURGE = Effect(latency_factor=1.3, error_pp=0.01)  # the second half of the soak, every device

Series = dict[str, list[float]]


class Device:
    """One simulated device: its standing levels, drawn once, and a sampler."""

    def __init__(self, rng: np.random.Generator, phi: float) -> None:
        n = NOISE
        self.rng, self.phi = rng, phi
        self.latency = n.latency_ms * math.exp(rng.normal(0.0, n.latency_device_spread))
        self.error = n.error_rate * math.exp(rng.normal(0.0, n.error_device_spread))
        self.cpu = rng.uniform(*n.cpu_range)
        self.mem = n.mem_mb * math.exp(rng.normal(0.0, n.mem_device_spread))
        self.temp = rng.uniform(*n.temp_range)

    def _noise(self, size: int) -> np.ndarray:
        """Standard-normal noise, AR(1) with coefficient phi (stationary, unit variance)."""
        e = self.rng.standard_normal(size)
        if self.phi == 0.0:
            return e
        out = np.empty(size)
        out[0] = e[0]
        scale = math.sqrt(1.0 - self.phi**2)
        for i in range(1, size):
            out[i] = self.phi * out[i - 1] + scale * e[i]
        return out

    def window(self, size: int, effects: list[Effect], minutes0: float) -> Series:
        """``size`` samples; ``effects[i]`` applies to sample i; ``minutes0``: minutes since
        the release was activated at sample 0 (negative before it)."""
        n = NOISE
        sigma = math.sqrt(math.log(1.0 + n.latency_cv**2))
        lat_factor = np.array([e.latency_factor for e in effects])
        error_pp = np.array([e.error_pp for e in effects])
        leak = np.array(
            [
                e.leak_mb_per_min * max(0.0, minutes0 + i * INTERVAL_S / 60.0)
                for i, e in enumerate(effects)
            ]
        )
        latency = self.latency * lat_factor * np.exp(sigma * self._noise(size))
        p = np.clip(self.error + error_pp, 0.0, 1.0)
        errors = self.rng.binomial(n.requests_per_sample, p) / n.requests_per_sample
        cpu = np.clip(self.cpu + n.cpu_sd * self._noise(size), 0.0, 100.0)
        mem = self.mem + leak + n.mem_sd * self._noise(size)
        temp = self.temp + n.temp_sd * self._noise(size)
        return {
            "error_rate": errors.tolist(),
            "latency_ms": latency.round(2).tolist(),
            "cpu_percent": cpu.round(2).tolist(),
            "mem_used_mb": mem.round(1).tolist(),
            "temperature_c": temp.round(2).tolist(),
            "restarts": [0.0] * size,
        }


def combine(*effects: Effect) -> Effect:
    return Effect(
        latency_factor=math.prod(e.latency_factor for e in effects),
        error_pp=sum(e.error_pp for e in effects),
        leak_mb_per_min=sum(e.leak_mb_per_min for e in effects),
        silent=any(e.silent for e in effects),
    )


@dataclass(frozen=True, slots=True)
class Trial:
    canary_before: Series
    control_before: Series  # the control devices' series, pooled
    canary: Series  # the soak; empty lists for a silent canary
    control: Series
    controls_before: list[Series]  # per control device (the engine's relative comparison)
    controls: list[Series]


def pooled(windows: list[Series]) -> Series:
    return {name: [v for w in windows for v in w[name]] for name in windows[0]}


def simulate(
    case: str, rng: np.random.Generator, baseline: int, phi: float, controls: int
) -> Trial:
    canary = Device(rng, phi)
    control = [Device(rng, phi) for _ in range(controls)]
    quiet = [Effect()] * baseline
    fleet = [
        SURGE if case == "surge" and i >= SOAK_SAMPLES // 2 else Effect()
        for i in range(SOAK_SAMPLES)
    ]
    release = RELEASE[case]
    before_min = -baseline * INTERVAL_S / 60.0
    soak = canary.window(SOAK_SAMPLES, [combine(f, release) for f in fleet], 0.5)
    if release.silent:
        soak = {name: [] for name in soak}
    before = [c.window(baseline, quiet, before_min) for c in control]
    during = [c.window(SOAK_SAMPLES, fleet, 0.5) for c in control]
    return Trial(
        canary_before=canary.window(baseline, quiet, before_min),
        control_before=pooled(before),
        canary=soak,
        control=pooled(during),
        controls_before=before,
        controls=during,
    )


def _sample(series: Series, at: int, device: str) -> HealthSample:
    def get(name: str) -> float | None:
        values = series[name]
        return values[at] if values else None

    return HealthSample(
        device_id=device,
        app_up=True,
        latency_ms=get("latency_ms"),
        error_rate=get("error_rate"),
        cpu_percent=get("cpu_percent"),
        mem_used_mb=get("mem_used_mb"),
        temperature_c=get("temperature_c"),
        restarts=0,
        release="r",
    )


POLICY = HealthPolicy()


def threshold_flags(t: Trial) -> bool:
    base = _sample(t.canary_before, -1, "canary")
    end = _sample(t.canary, -1, "canary")
    return evaluate_health(end, base, POLICY).status is not DeviceHealth.HEALTHY


def analysis_flags(t: Trial, plain: bool) -> bool:
    if plain:
        return not judge(t.canary, t.control).passed
    return not judge(
        t.canary,
        t.control,
        canary_baseline=t.canary_before,
        control_baseline=t.control_before,
    ).passed


def _medians(series: Series) -> dict[str, float]:
    return {n: float(np.median(v)) for n, v in series.items() if v}


def engine_flags(t: Trial) -> bool:
    """The engine's comparison (``core.analysis.judge_relative``): every device relative to
    the median of its own baseline window, the control pool concatenated."""
    return not judge_relative(
        t.canary,
        _medians(t.canary_before),
        t.controls,
        [_medians(b) for b in t.controls_before],
    ).passed


def run_case(case: str, index: int, args: argparse.Namespace) -> dict[str, int]:
    """Flag counts per judge for one case, from the case's own stream of the seed."""
    judges: dict[str, Callable[[Trial], bool]] = {
        "threshold": threshold_flags,
        "analysis": lambda t: analysis_flags(t, args.plain),
        "engine": engine_flags,
    }
    rng = np.random.default_rng([args.seed, index])
    flagged = dict.fromkeys(judges, 0)
    for _ in range(args.trials):
        trial = simulate(case, rng, args.baseline, args.autocorr, args.controls)
        for name, flags in judges.items():
            flagged[name] += flags(trial)
    return flagged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--controls", type=int, default=5, help="control devices per canary")
    ap.add_argument("--baseline", type=int, default=SOAK_SAMPLES, help="pre-deployment samples")
    ap.add_argument("--plain", action="store_true", help="no pre-deployment adjustment")
    ap.add_argument("--autocorr", type=float, default=0.0, help="AR(1) coefficient of noise")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [pool.submit(run_case, case, i, args) for i, case in enumerate(CASES)]
        for case, future in zip(CASES, futures, strict=True):
            for name, count in future.result().items():
                print(
                    f"case={case} judge={name} trials={args.trials} "
                    f"flagged={count / args.trials:.3f}",
                    flush=True,
                )
    print(f"# {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
