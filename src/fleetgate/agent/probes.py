"""Health measurements: the app's endpoints and the device's own vitals, without psutil.

Contract:
- ``HealthProber`` probes the current release's ``health_url`` (and scrapes ``metrics_url``)
  every ``probe_interval_s`` in a background task, keeping the last ``window`` results.
  ``error_rate()`` prefers the app's counters (delta of ``app_errors_total`` over
  ``app_requests_total`` across the window; a counter reset restarts the window) and falls back
  to failed/total of its own probes (also while the window holds fewer than
  ``MIN_REQUESTS_FOR_RATE`` requests). Probe failures before the release first answered its
  health URL are start-up, not errors: they are not counted (``app_up`` says it is down).
  ``set_target`` (called on every switch) clears the windows:
  numbers never mix two releases.
- Device vitals come from /proc and /sys: ``CpuSampler`` (``/proc/stat`` deltas), ``memory_mb``
  (``/proc/meminfo``), ``disk_free_mb`` (``statvfs``), ``temperature_c`` (max thermal zone),
  ``gpu_percent`` (Jetson sysfs load, else NVML when importable, else ``None``).
- Metrics pages are read with ``agent/promtext.py``: at most ``MAX_BODY_BYTES`` of body (cut
  back to whole lines) and ``MAX_SERIES`` series, so a hostile app cannot make the agent hold
  or send more. ``scrape_metrics`` returns every series (``core.model.metric_key`` keys) and the
  totals of the counters above summed over their labels. ``health`` reports the finite series
  of a live scrape (``reportable``) as ``metrics``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fleetgate.agent.promtext import (
    MAX_BODY_BYTES,
    MAX_SERIES,
    Exposition,
    complete_lines,
    parse_exposition,
)

REQUESTS_METRIC = "app_requests_total"
ERRORS_METRIC = "app_errors_total"
LATENCY_METRIC = "app_request_latency_ms"
PROBE_TIMEOUT_S = 2.0
INLINE_PARSE_CHARS = 16 * 1024
# Below this many requests in the window a counter ratio is mostly rounding noise (1 error in
# 3 requests reads as 33 %): the agent's own probes are the better estimate then.
MIN_REQUESTS_FOR_RATE = 10
JETSON_GPU_LOAD = Path("/sys/devices/gpu.0/load")
THERMAL_ROOT = Path("/sys/class/thermal")


def parse_prometheus(text: str, max_series: int = MAX_SERIES) -> dict[str, float]:
    """Every sample of a metrics page: ``name`` or ``name{labels}`` (``metric_key``) → value."""
    return parse_exposition(text, max_series=max_series).series


def _parse_page(text: str) -> Exposition:
    return parse_exposition(text, sum_of=(REQUESTS_METRIC, ERRORS_METRIC, LATENCY_METRIC))


def reportable(series: Mapping[str, float]) -> dict[str, float]:
    """The series a health answer can carry: JSON has no ``NaN``/``Inf`` (a summary's quantile
    is ``NaN`` before its first observation, which is no data, not a number)."""
    return {k: v for k, v in series.items() if math.isfinite(v)}


class CpuSampler:
    """Whole-device CPU utilisation between two reads of /proc/stat."""

    def __init__(self, path: Path = Path("/proc/stat")) -> None:
        self.path = path
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        try:
            with self.path.open() as fh:
                fields = fh.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        values = [int(v) for v in fields[1:9]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return idle, sum(values)

    def percent(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[1] <= last[1]:
            return None
        busy = (now[1] - last[1]) - (now[0] - last[0])
        return round(100.0 * busy / (now[1] - last[1]), 1)


def memory_mb(path: Path = Path("/proc/meminfo")) -> tuple[float | None, float | None]:
    """(used, total) in MiB; used = MemTotal - MemAvailable."""
    info: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                info[key] = int(parts[0])  # kB
    except (OSError, ValueError):
        return None, None
    total = info.get("MemTotal")
    avail = info.get("MemAvailable", info.get("MemFree"))
    if total is None or avail is None:
        return None, None
    return round((total - avail) / 1024, 1), round(total / 1024, 1)


def disk_free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return round(st.f_bavail * st.f_frsize / (1024 * 1024), 1)


def temperature_c(root: Path = THERMAL_ROOT) -> float | None:
    temps: list[float] = []
    for zone in root.glob("thermal_zone*/temp"):
        with contextlib.suppress(OSError, ValueError):
            temps.append(int(zone.read_text().strip()) / 1000.0)
    return round(max(temps), 1) if temps else None


_nvml: Any = None
_nvml_failed = False


def gpu_percent(jetson_load: Path = JETSON_GPU_LOAD) -> float | None:
    """Jetson's integrated GPU (per-mille in sysfs), else a discrete NVIDIA GPU via NVML."""
    global _nvml, _nvml_failed
    try:
        return round(int(jetson_load.read_text().strip()) / 10.0, 1)
    except (OSError, ValueError):
        pass
    if _nvml_failed or not Path("/dev/nvidiactl").exists():
        return None
    try:
        if _nvml is None:
            import pynvml  # type: ignore[import-not-found]  # optional: nvidia-ml-py

            pynvml.nvmlInit()
            _nvml = pynvml
        handle = _nvml.nvmlDeviceGetHandleByIndex(0)
        return float(_nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
    except Exception:  # any NVML failure means "cannot measure", never a crash
        _nvml_failed = True
        return None


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    release_id: str
    health_url: str | None
    metrics_url: str | None


class HealthProber:
    def __init__(self, session: aiohttp.ClientSession, window: int = 20) -> None:
        self.session = session
        self.target: ProbeTarget | None = None
        self.probes: collections.deque[tuple[bool, float]] = collections.deque(maxlen=window)
        self.counters: collections.deque[tuple[float, float]] = collections.deque(maxlen=window)
        self.latency_gauge: float | None = None
        self.seen_up = False  # the current target answered its health URL at least once
        self.cpu = CpuSampler()
        self.cpu_percent: float | None = None

    def set_target(self, target: ProbeTarget | None) -> None:
        self.target = target
        self.probes.clear()
        self.counters.clear()
        self.latency_gauge = None
        self.seen_up = False

    async def probe_health(self) -> tuple[bool, float | None]:
        """One GET of the health URL: (2xx?, latency in ms if answered)."""
        target = self.target
        if target is None or target.health_url is None:
            return False, None
        started = time.perf_counter()
        try:
            async with self.session.get(
                target.health_url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
            ) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False, None
        if ok and self.target is target:
            self.seen_up = True
        return ok, round((time.perf_counter() - started) * 1000.0, 2)

    async def scrape_metrics(self) -> Exposition | None:
        """One GET of the metrics URL, read up to ``MAX_BODY_BYTES``; ``None`` if there is no
        metrics URL, the app did not answer 200, or the target changed meanwhile."""
        target = self.target
        if target is None or target.metrics_url is None:
            return None
        chunks: list[bytes] = []
        size = 0
        try:
            async with self.session.get(
                target.metrics_url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    return None
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        break  # the rest is never read: closing the response drops it
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return None
        if self.target is not target:
            return None
        text = complete_lines(b"".join(chunks)).decode("utf-8", errors="replace")
        if len(text) <= INLINE_PARSE_CHARS:
            return _parse_page(text)
        # A big page takes a good part of a second to read: not on the loop that answers the
        # controller.
        return await asyncio.to_thread(_parse_page, text)

    async def tick(self) -> None:
        """One background round: health probe, metrics scrape, CPU sample."""
        self.cpu_percent = self.cpu.percent()
        target = self.target
        if target is None:
            return
        if target.health_url is not None:
            ok, latency = await self.probe_health()
            if self.target is target and self.seen_up:
                self.probes.append((ok, latency or 0.0))
        scraped = await self.scrape_metrics()
        if scraped is None or self.target is not target:
            return
        metrics = scraped.totals
        if LATENCY_METRIC in metrics:
            self.latency_gauge = metrics[LATENCY_METRIC]
        if REQUESTS_METRIC in metrics:
            sample = (metrics[REQUESTS_METRIC], metrics.get(ERRORS_METRIC, 0.0))
            if self.counters and (
                sample[0] < self.counters[-1][0] or sample[1] < self.counters[-1][1]
            ):
                self.counters.clear()  # the app restarted: its counters began again at zero
            self.counters.append(sample)

    def error_rate(self) -> float | None:
        if len(self.counters) >= 2:
            (r0, e0), (r1, e1) = self.counters[0], self.counters[-1]
            if r1 - r0 >= MIN_REQUESTS_FOR_RATE:
                return round(min(max((e1 - e0) / (r1 - r0), 0.0), 1.0), 4)
        if self.probes:
            failed = sum(1 for ok, _ in self.probes if not ok)
            return round(failed / len(self.probes), 4)
        return None

    def latency_ms(self, live: float | None) -> float | None:
        if self.latency_gauge is not None:
            return round(self.latency_gauge, 2)
        samples = [lat for ok, lat in self.probes if ok]
        if live is not None:
            samples.append(live)
        return round(sum(samples) / len(samples), 2) if samples else None
