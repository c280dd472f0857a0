"""What every engine step needs: the release, the policy, the devices, the channel, the clock.

Everything here is rebuilt on resume from the ``deployment.created`` event (release, policy,
device snapshot), so a controller that never saw the start of a deployment can drive it.
Time is injected. ``Clock`` is this controller's own: event timestamps, ``sleep`` for soaks
and backoff. ``store_clock`` is the authority for times that gate safety (invariant 9): a soak
is measured on it, so a controller whose own clock is wrong by years neither shortens nor
lengthens one. It defaults to the store's clock (``Store.now``); tests drive both from one
virtual clock so soaks take no wall time.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import stamina
from structlog.contextvars import bind_contextvars

from fleetgate.clock import utc_now, utc_now_iso
from fleetgate.core.model import Device, HealthSample
from fleetgate.core.policy import Policy
from fleetgate.core.seqwindow import SEQ_BLOCK
from fleetgate.engine.recorder import Recorder
from fleetgate.errors import FleetgateError
from fleetgate.transports.client import DeviceClient

T = TypeVar("T")

# The authoritative clock: an instant read from the store (``Store.now``), not this host.
StoreClock = Callable[[], Awaitable[datetime]]


async def host_clock() -> datetime:
    """A ``StoreClock`` for contexts with no store behind them (the host's clock)."""
    return utc_now()


class Clock:
    """Wall clock for timestamps, ``sleep`` for soaks and backoff."""

    def now_iso(self) -> str:
        return utc_now_iso()

    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)


class Parked(Exception):
    """A soak with nothing to do before ``until`` (store clock): in service mode the drive
    ends here, the deployment's ``wake_at`` is set, its lease released (waiting is data).
    The next drive re-enters the same step and serves only what is left."""

    def __init__(self, until: datetime) -> None:
        super().__init__(f"parked until {until.isoformat()}")
        self.until = until


@dataclass(frozen=True, slots=True)
class Release:
    release_id: str
    manifest_json: str
    signature: str
    size: int
    sha256: str
    url: str = ""  # the distribution point of this controller run
    # A signed downgrade authorisation passed to every stage (deploy start
    # --downgrade-authorization): {document, signature}, checked by each device.
    downgrade_authorization: Mapping[str, str] | None = None


@dataclass
class EngineContext:
    deployment_id: str
    transport: DeviceClient
    recorder: Recorder
    policy: Policy
    release: Release
    devices: Mapping[str, Device]
    clock: Clock = field(default_factory=Clock)
    concurrency: int = 200
    actor: str = "fleetgate"
    rng: random.Random = field(default_factory=random.Random)
    baselines: dict[str, HealthSample | None] = field(default_factory=dict)
    seq_base: int = 0
    on_progress: Callable[[str, int, int], None] | None = None
    store_clock: StoreClock = host_clock
    # Longest uninterrupted sleep of a soak: a third of the lease TTL, so the remaining time is
    # re-read from ``store_clock`` several times per lease period.
    soak_slice_s: float = 20.0
    # Health samples taken during soaks, by soak key ("STAGE:ROUND"): one entry per tick,
    # ``{"tick", "t", "samples": {device: sample dict | None}}``; rebuilt from the log's
    # ``soak.sampled`` events on resume (engine.canary_analysis).
    sampled: dict[str, list[Mapping[str, Any]]] = field(default_factory=dict)
    # Each control device's health sample taken when it was chosen (``canary.controls``): its
    # own "before", as the canary's baseline is the canary's.
    control_pre: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    control_pools: dict[str, list[str]] = field(default_factory=dict)  # canary -> controls
    # The inventory as it is now (``Store.get_devices``): pre-flight re-reads each device's
    # registry state, so one put in maintenance or quarantine since the start is not deployed.
    registry: Callable[[list[str]], Awaitable[list[Device]]] | None = None
    # Service mode: a soak wait of at least this long parks the deployment (``Parked``)
    # instead of sleeping; None: sleep in this process (the CLI drives to the end).
    park_after_s: float | None = None
    # True once someone else wrote to this deployment's log (a human decision): a sleeping
    # soak checks it between slices so a halt or a rollback is not kept waiting.
    log_moved: Callable[[], Awaitable[bool]] | None = None
    # Soaks already ended in the log (key "STAGE:ROUND" -> served in full?): re-entering a
    # step after a park or a crash does not serve or record them again.
    soaks_ended: dict[str, bool] = field(default_factory=dict)
    # Each canary's latest "initial" health sample (stage 0) from the log: a VERIFY step
    # re-entered after its soak started judges with the round it already took.
    canary_initial: dict[str, HealthSample] = field(default_factory=dict)
    # Health a device reported inside another answer this run (the pre-flight's facts carry
    # it), not yet used: the baseline is taken from it instead of a call of its own (issue 12).
    fresh_health: dict[str, HealthSample] = field(default_factory=dict)
    # Devices smoke-tested in this run, by stage: their smoke sample is their wave's first
    # health sample (``evaluate_wave`` does not ask them again before the soak).
    smoke_tested: dict[int, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.concurrency)

    def device(self, device_id: str) -> Device:
        return self.devices[device_id]

    def next_seq(self, device_id: str) -> int:
        """Per-device increasing command numbers: a per-deployment block (from the store's
        global counter, so later deployments always use higher numbers) plus the count of
        commands this deployment already sent the device (from the log). The agent refuses a
        seq outside its block (core.seqwindow), so a block that ran out is an error here."""
        n = self.recorder.ledger.commands.get(device_id, 0) + 1
        if n >= SEQ_BLOCK:
            raise FleetgateError(
                f"{device_id}: deployment {self.deployment_id} sent {n - 1} commands, "
                f"its seq block holds {SEQ_BLOCK - 1}"
            )
        return self.seq_base * SEQ_BLOCK + n

    async def begin_command(self, device_id: str, command: str, **intent: Any) -> int:
        """The seq to send ``command`` with: the in-flight one if a controller died after
        logging it (the agent then answers from its record), else a new one whose intent
        (``device.<command>_requested``) is logged before anything is sent."""
        pending = self.recorder.ledger.pending_for(device_id, command)
        if pending is not None:
            return pending.seq
        seq = self.next_seq(device_id)
        await self.recorder.record(
            f"device.{command}_requested", device_id=device_id, seq=seq, **intent
        )
        return seq

    async def bounded(self, coro: Awaitable[T]) -> T:
        async with self._sem:
            return await coro

    async def each(
        self, ids: Iterable[str], fn: Callable[[str], Awaitable[T]], label: str = ""
    ) -> dict[str, T]:
        """Run ``fn`` for every device with bounded concurrency; results by device id.

        A pool of at most ``concurrency`` workers takes the devices one after another (issue
        12): not one task per device, which at 100,000 devices is 100,000 coroutines, frames
        and task objects alive at once for a few hundred doing anything."""
        ids = list(ids)
        done = 0
        out: dict[str, T] = {}
        todo = iter(ids)

        async def worker() -> None:
            nonlocal done
            for i in todo:  # shared: each device is taken by exactly one worker
                bind_contextvars(device_id=i)  # this worker's log records name its device
                out[i] = await self.bounded(fn(i))
                done += 1
                if self.on_progress is not None and label:
                    self.on_progress(label, done, len(ids))

        async with asyncio.TaskGroup() as tg:
            for k in range(min(self.concurrency, len(ids))):
                tg.create_task(worker(), name=f"fleetgate-{label or 'device'}-worker-{k}")
        return out

    async def retrying(
        self, call: Callable[[], Awaitable[T]], *, attempts: int | None = None
    ) -> tuple[T, int]:
        """Retry retryable errors (transport trouble, an agent that is busy) with jittered
        exponential backoff — the spec's "3 attempts max" by default. Returns the result and
        the attempts it took; the last error propagates, and non-retryable ones at once."""
        # The first attempt runs outside stamina: most calls succeed at once, and setting up a
        # retry context cost ~10 µs per agent call (3-5 % of the controller's CPU at 10,000
        # devices, issue 12). A retryable failure is handed to stamina as its first attempt's
        # (re-raised, not called again), so the attempts, waits, hooks and logs are stamina's
        # exactly as before.
        try:
            return await call(), 1
        except Exception as exc:
            if not _retryable(exc):
                raise
            first: Exception | None = exc
        base = self.policy.retries.backoff_s
        async for attempt in stamina.retry_context(
            on=_retryable,
            attempts=attempts or self.policy.retries.attempts,
            timeout=None,
            wait_initial=base,
            wait_max=max(base, 60.0),
            wait_jitter=base,
        ):
            with attempt:
                if first is not None:
                    failed, first = first, None
                    raise failed
                return await call(), attempt.num
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, FleetgateError) and exc.retryable


def sample_dict(s: HealthSample | None) -> dict[str, Any] | None:
    if s is None:
        return None
    return {
        "app_up": s.app_up,
        "latency_ms": s.latency_ms,
        "error_rate": s.error_rate,
        "cpu_percent": s.cpu_percent,
        "mem_used_mb": s.mem_used_mb,
        "mem_total_mb": s.mem_total_mb,
        "disk_free_mb": s.disk_free_mb,
        "gpu_percent": s.gpu_percent,
        "temperature_c": s.temperature_c,
        "restarts": s.restarts,
        "crash_loop": s.crash_loop,
        "release": s.release,
        "metrics": dict(s.metrics),
    }


def sample_from_dict(device_id: str, d: Mapping[str, Any] | None) -> HealthSample | None:
    """The inverse of ``sample_dict``. Logs written before samples carried app metrics have no
    ``"metrics"``: they read as none (never as a sample that had them)."""
    if not d:
        return None

    def num(key: str) -> float | None:
        v = d.get(key)
        return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None

    raw = d.get("metrics")
    metrics = {
        str(k): float(v)
        for k, v in (raw.items() if isinstance(raw, Mapping) else ())
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }

    return HealthSample(
        device_id=device_id,
        app_up=bool(d.get("app_up")),
        latency_ms=num("latency_ms"),
        error_rate=num("error_rate"),
        cpu_percent=num("cpu_percent"),
        mem_used_mb=num("mem_used_mb"),
        mem_total_mb=num("mem_total_mb"),
        disk_free_mb=num("disk_free_mb"),
        gpu_percent=num("gpu_percent"),
        temperature_c=num("temperature_c"),
        restarts=int(d.get("restarts") or 0),
        crash_loop=bool(d.get("crash_loop")),
        release=str(d["release"]) if d.get("release") else None,
        metrics=metrics,
    )
