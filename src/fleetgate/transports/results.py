"""Typed results of the protocol's answers, parsed strictly from JSON.

Contract: ``X.parse(device_id, data)`` returns a frozen value or raises ``DeviceRefusal`` with
code ``bad-response`` (not retryable) naming the field that does not have the protocol's shape.
A ``200`` is never an error here: ``ActivateResult.ok`` is false for ``start-failed`` and
``RollbackResult.ok`` for a restored release that is not healthy; the engine judges those.
``parse_health`` attributes a sample to the device that was asked, whatever the body claims,
and reads the app's ``metrics`` (absent: none); a metric that is not a finite number, or a
``metrics`` that is not an object of them, is a bad response like any other bad field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetgate.core.model import HealthSample
from fleetgate.transports.errors import DeviceRefusal, bad_response

# App metrics a health answer may carry: the agent sends at most 200 series of keys up to 512
# characters; more than this is not an agent following the protocol.
MAX_METRICS = 1000
MAX_METRIC_KEY_CHARS = 1024
METRIC_KEY_RE = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*(\{.*\})?$", re.DOTALL)


class _Reader:
    """Typed field access on a JSON object; any mismatch is ``bad_response``."""

    def __init__(self, device_id: str, data: Any, what: str) -> None:
        if not isinstance(data, dict):
            raise bad_response(device_id, f"{what}: expected a JSON object")
        self.device_id, self.data, self.what = device_id, data, what

    def _bad(self, key: str, expected: str) -> DeviceRefusal:
        return bad_response(self.device_id, f"{self.what}.{key}: expected {expected}")

    def text(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self._bad(key, "a string")
        return value

    def opt_text(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._bad(key, "a string or null")
        return value

    def flag(self, key: str, default: bool | None = None) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self._bad(key, "true or false")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        value = self.opt_number(key)
        if value is None:
            if default is None:
                raise self._bad(key, "a number")
            return default
        return value

    def opt_number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._bad(key, "a number or null")
        if not math.isfinite(value):
            raise self._bad(key, "a finite number")
        return float(value)

    def integer(self, key: str, default: int = 0) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._bad(key, "an integer")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise self._bad(key, "a list of strings")
        return tuple(value)

    def metrics(self, key: str) -> dict[str, float]:
        """App metrics: an object of at most ``MAX_METRICS`` series keys (``name`` or
        ``name{labels}``, at most ``MAX_METRIC_KEY_CHARS``) → finite numbers. Absent or
        ``null``: none."""
        value = self.data.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._bad(key, "an object of metric name -> number")
        if len(value) > MAX_METRICS:
            raise self._bad(key, f"at most {MAX_METRICS} metrics")
        out: dict[str, float] = {}
        for name, number in value.items():
            if not isinstance(name, str):
                raise self._bad(key, "metric names that are strings")
            where = f"{key}[{name[:80] + '…' if len(name) > 80 else name!r}]"
            if len(name) > MAX_METRIC_KEY_CHARS or not METRIC_KEY_RE.match(name):
                raise self._bad(where, "a metric name (name or name{labels})")
            if isinstance(number, bool) or not isinstance(number, (int, float)):
                raise self._bad(where, "a number")
            try:
                out[name] = float(number)
            except OverflowError:  # an integer beyond float range
                raise self._bad(where, "a finite number") from None
            if not math.isfinite(out[name]):
                raise self._bad(where, "a finite number")
        return out

    def str_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise self._bad(key, "an object")
        return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True, slots=True)
class PingResult:
    id: str
    agent_version: str
    uptime_s: float

    @classmethod
    def parse(cls, device_id: str, data: Any) -> PingResult:
        r = _Reader(device_id, data, "ping")
        if not r.flag("ok", False):
            raise bad_response(device_id, "ping.ok is not true")
        return cls(r.text("id"), r.opt_text("agent_version") or "", r.number("uptime_s", 0.0))


@dataclass(frozen=True, slots=True)
class Facts:
    """``GET /v1/facts``: what the device is and holds right now."""

    id: str
    hardware: str
    arch: str
    ram_mb: float
    disk_free_mb: float
    software: Mapping[str, str]
    agent_version: str
    current: str | None
    previous: str | None
    rollback_available: bool
    releases: tuple[str, ...]
    state: str
    last_seq: int
    app_running: bool
    interrupted: Mapping[str, Any] | None = None
    reserve_mb: float = 0.0  # free disk the agent keeps back when staging (core.disk)
    # Issue 10: the current release's trial (null once committed), the device's last
    # self-revert (reason, from, to, at, logs) while it stands, the committed-version floors.
    trial: Mapping[str, Any] | None = None
    reverted: Mapping[str, Any] | None = None
    committed: Mapping[str, str] | None = None
    # Issue 9: the size of the agent's filesystem and whether it has a GPU, for the inventory
    # (``registry refresh``); None from an agent that does not report them.
    disk_mb: float | None = None
    gpu: bool | None = None
    # Issue 12: the device's health at the same moment (agents since 0.12 send it), so the
    # pre-flight's one call also gives the pre-deploy baseline. None: ask ``health`` apart.
    health: HealthSample | None = None

    @classmethod
    def parse(cls, device_id: str, data: Any) -> Facts:
        r = _Reader(device_id, data, "facts")
        interrupted = data.get("interrupted")
        if interrupted is not None and not isinstance(interrupted, dict):
            raise bad_response(device_id, "facts.interrupted: expected an object or null")
        for key in ("trial", "reverted", "committed"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise bad_response(device_id, f"facts.{key}: expected an object or null")
        return cls(
            id=r.text("id"),
            hardware=r.text("hardware"),
            arch=r.text("arch"),
            ram_mb=r.number("ram_mb", 0.0),
            disk_free_mb=r.number("disk_free_mb"),
            reserve_mb=r.number("reserve_mb", 0.0),
            software=r.str_map("software"),
            agent_version=r.opt_text("agent_version") or "",
            current=r.opt_text("current"),
            previous=r.opt_text("previous"),
            rollback_available=r.flag("rollback_available"),
            releases=r.strings("releases"),
            state=r.text("state"),
            last_seq=r.integer("last_seq"),
            app_running=r.flag("app_running", False),
            interrupted=interrupted,
            trial=data.get("trial"),
            reverted=data.get("reverted"),
            committed=r.str_map("committed") if data.get("committed") is not None else None,
            disk_mb=r.opt_number("disk_mb"),
            gpu=r.flag("gpu") if data.get("gpu") is not None else None,
            health=_opt_health(device_id, data, "facts"),
        )


@dataclass(frozen=True, slots=True)
class StageResult:
    """``status``: ``staged`` | ``already-staged`` | ``already-installed``."""

    status: str
    release: str
    replayed: bool = False

    @classmethod
    def parse(cls, device_id: str, data: Any) -> StageResult:
        r = _Reader(device_id, data, "stage")
        return cls(r.text("status"), r.text("release"), r.flag("replayed", False))


@dataclass(frozen=True, slots=True)
class ActivateResult:
    """``status``: ``active`` | ``start-failed`` (then ``error`` and ``logs`` say why)."""

    status: str
    release: str
    previous: str | None
    error: str | None = None
    logs: tuple[str, ...] = ()
    replayed: bool = False
    # Issue 12: the device's health once the activated release answered healthy (a fresh,
    # successful answer only: a replayed one is history, a failed start has nothing to judge),
    # so the smoke test needs no call of its own.
    health: HealthSample | None = None

    @property
    def ok(self) -> bool:
        return self.status == "active"

    @classmethod
    def parse(cls, device_id: str, data: Any) -> ActivateResult:
        r = _Reader(device_id, data, "activate")
        return cls(
            status=r.text("status"),
            release=r.text("release"),
            previous=r.opt_text("previous"),
            error=r.opt_text("error"),
            logs=r.strings("logs"),
            replayed=r.flag("replayed", False),
            health=None if r.flag("replayed", False) else _opt_health(device_id, data, "activate"),
        )


@dataclass(frozen=True, slots=True)
class RollbackResult:
    """``status`` is ``rolled-back``; ``release`` is now current, ``from_release`` was left."""

    status: str
    release: str
    from_release: str | None
    app_healthy: bool = True
    error: str | None = None
    logs: tuple[str, ...] = ()
    replayed: bool = False
    # The device had already reverted by itself (issue 10): reason, message, at.
    self_reverted: Mapping[str, Any] | None = None
    # Issue 12: the device's health once the restored release runs (a fresh answer only: a
    # replayed one carries none), so the rollback's first recovery check needs no call.
    health: HealthSample | None = None

    @property
    def ok(self) -> bool:
        return self.status == "rolled-back" and self.app_healthy

    @classmethod
    def parse(cls, device_id: str, data: Any) -> RollbackResult:
        r = _Reader(device_id, data, "rollback")
        return cls(
            status=r.text("status"),
            release=r.text("release"),
            from_release=r.opt_text("from"),
            app_healthy=r.flag("app_healthy", True),
            error=r.opt_text("error"),
            logs=r.strings("logs"),
            replayed=r.flag("replayed", False),
            self_reverted=_opt_object(device_id, data, "rollback", "self_reverted"),
            health=None if r.flag("replayed", False) else _opt_health(device_id, data, "rollback"),
        )


@dataclass(frozen=True, slots=True)
class CommitResult:
    """``status``: ``committed`` | ``already-committed``; ``floor``: name -> highest committed
    version on the device after this commit."""

    status: str
    release: str
    floor: Mapping[str, str]
    replayed: bool = False

    @classmethod
    def parse(cls, device_id: str, data: Any) -> CommitResult:
        r = _Reader(device_id, data, "commit")
        return cls(
            r.text("status"), r.text("release"), r.str_map("floor"), r.flag("replayed", False)
        )


def _opt_object(device_id: str, data: Any, what: str, key: str) -> Mapping[str, Any] | None:
    value = data.get(key) if isinstance(data, dict) else None
    if value is not None and not isinstance(value, dict):
        raise bad_response(device_id, f"{what}.{key}: expected an object or null")
    return value


@dataclass(frozen=True, slots=True)
class DeviceLogs:
    app: tuple[str, ...] = ()
    agent: tuple[str, ...] = ()

    @classmethod
    def parse(cls, device_id: str, data: Any) -> DeviceLogs:
        r = _Reader(device_id, data, "logs")
        return cls(r.strings("app"), r.strings("agent"))


def _opt_health(device_id: str, data: Any, what: str) -> HealthSample | None:
    """A health sample carried inside another answer (``facts``, ``rollback``): absent or
    null is none; anything else must be a health answer, and a bad one is a bad response."""
    value = data.get("health") if isinstance(data, dict) else None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_response(device_id, f"{what}.health: expected an object or null")
    return parse_health(device_id, value)


def parse_health(device_id: str, data: Any) -> HealthSample:
    """``GET /v1/health`` -> ``HealthSample``. The sample is attributed to ``device_id`` (the
    device we asked), never to whatever id the body claims."""
    r = _Reader(device_id, data, "health")
    restarts = r.integer("restarts", 0)
    return HealthSample(
        device_id=device_id,
        app_up=r.flag("app_up", False),
        latency_ms=r.opt_number("latency_ms"),
        error_rate=r.opt_number("error_rate"),
        cpu_percent=r.opt_number("cpu_percent"),
        mem_used_mb=r.opt_number("mem_used_mb"),
        mem_total_mb=r.opt_number("mem_total_mb"),
        disk_free_mb=r.opt_number("disk_free_mb"),
        gpu_percent=r.opt_number("gpu_percent"),
        temperature_c=r.opt_number("temperature_c"),
        restarts=restarts,
        crash_loop=r.flag("crash_loop", False),
        release=r.opt_text("release"),
        metrics=r.metrics("metrics"),
        rollback_available=r.flag("rollback_available")
        if data.get("rollback_available") is not None
        else None,
    )
