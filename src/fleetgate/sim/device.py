"""``VirtualDevice``: one simulated agent — the protocol's semantics without a disk or an app.

One model, two front ends: the aiohttp server (``sim/server.py``) and the in-process
``MemoryChannel`` (via sim/dispatch.py) both call the same methods, so the engine's unit tests
and the HTTP simulator cannot disagree about what a device does.

Contract (docs/protocol.md, mirrored from the real agent):
- ``authenticate`` applies §1's checks in order (bad token 401, no device header 401, wrong
  device 403).
- ``command`` applies §4's idempotency: one command at a time (``busy``/``in-progress`` do not
  consume a seq), replay of a finished seq with ``"replayed": true``, ``stale-seq``,
  ``seq-conflict``, ``seq-out-of-range`` (``core.seqwindow``: the seq outside its ``seq_base``
  window or too far ahead, refused without being recorded); only retryable failures are
  executed again. The record keeps 100 seqs.
- What each command does is in ``sim/device_commands.py``; this class holds the state, the
  faults and the reports (ping, facts, health, logs).
- ``admit`` is the network: it says whether a request is dropped (``unreachable``, ``flaky``,
  and while ``away``: ``offline`` after its moment, ``late`` before it) and how long the answer
  is delayed (``latency:delay``).
- ``health`` is computed at the moment of the request, on ``clock``: ``bends`` says what the
  faults that apply then do (a ``surge`` only inside its window after injection, a ``leak`` by
  the time since the later of its injection and the last switch of release).
- Every request the device acts on is counted in ``received``/``executed`` keyed by
  ``(command, release)`` and appended to ``history``: crash tests prove from these that no
  device staged or activated one release twice.
"""

from __future__ import annotations

import hmac
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetgate import __version__
from fleetgate.core.model import Device
from fleetgate.core.seqwindow import jump_problem, seq_base_of
from fleetgate.sim.device_commands import (
    COMMANDS,
    activate,
    commit,
    release_of,
    rollback,
    stage,
    switch,
    validate,
)
from fleetgate.sim.device_state import (
    CommandEvent,
    DeviceSnapshot,
    Record,
    Refused,
    ReleaseInfo,
    SimReply,
    refusal,
)
from fleetgate.sim.faults import FaultSpec
from fleetgate.sim.health import Baseline, Bends, Noise, Traffic, reading

if TYPE_CHECKING:
    from fleetgate.sim.fleetspec import FleetSpec, HardwareProfile

RECORD_SIZE = 100
AGENT_VERSION = f"{__version__}+sim"
__all__ = ["COMMANDS", "Admission", "VirtualDevice"]


@dataclass(frozen=True, slots=True)
class Admission:
    drop: str | None = None  # "refused" (unreachable) | "reset" (flaky) | None
    delay_s: float = 0.0


@dataclass
class ActiveFault:
    spec: FaultSpec
    remaining: int = 0  # flaky: drops left
    since: float = 0.0  # the device clock when it was injected (surge windows, leaks)

    def in_window(self, now: float) -> bool:
        """A ``surge`` acts from ``start`` to ``start + duration`` seconds after injection."""
        begin = self.since + self.spec.param("start")
        return begin <= now < begin + self.spec.param("duration")


@dataclass
class _Counters:
    received: Counter[tuple[str, str]] = field(default_factory=Counter)
    executed: Counter[tuple[str, str]] = field(default_factory=Counter)
    history: list[CommandEvent] = field(default_factory=list)


class VirtualDevice:
    def __init__(
        self,
        device: Device,
        profile: HardwareProfile,
        spec: FleetSpec,
        token: str,
        clock: Callable[[], float],
    ) -> None:
        self.device = device
        self.profile = profile
        self.spec = spec
        self._token = token.encode()
        self.clock = clock
        self.noise = Noise(f"health/{spec.seed}/{device.id}")
        self.baseline = Baseline.draw(
            self.noise, gpu=profile.gpu, mem_range=profile.mem_used_fraction
        )
        self.started_at = clock()
        self.releases: dict[str, ReleaseInfo] = {}
        self.current: str | None = None
        self.previous: str | None = None
        if spec.initial_release is not None:
            self.releases[spec.initial_release] = ReleaseInfo.initial(spec.initial_release)
            self.current = spec.initial_release
        self.switched_at = self.started_at
        self.traffic = Traffic(self.switched_at)
        self.last_seq = 0
        self.records: dict[int, Record] = {}
        self.activity = "idle"
        self.busy = False
        self.faults: list[ActiveFault] = []
        self.dropped = 0  # requests the network faults swallowed
        self.counters = _Counters()
        self.app_log: deque[str] = deque(maxlen=1000)
        self.agent_log: deque[str] = deque(maxlen=1000)
        # Commit or revert (issue 10): the release on trial, the last self-revert while it
        # stands, the committed version per release name.
        self.trial: str | None = None
        self.reverted: dict[str, Any] | None = None
        self.committed: dict[str, str] = {}

    # -- faults ------------------------------------------------------------------------------------
    def add_fault(self, spec: FaultSpec) -> None:
        remaining = int(spec.param("k")) if spec.kind == "flaky" else 0
        self.faults.append(ActiveFault(spec, remaining, self.clock()))

    def clear_faults(self) -> None:
        self.faults.clear()

    def version_of(self, release: str | None) -> str | None:
        info = self.releases.get(release) if release is not None else None
        return info.version if info is not None else None

    def _active(self, kind: str, release: str | None = None) -> Iterator[ActiveFault]:
        if not self.faults:
            return
        version = self.version_of(self.current if release is None else release)
        for f in self.faults:
            if f.spec.kind == kind and f.spec.applies_to_version(version):
                yield f

    def first_fault(self, kind: str, release: str | None = None) -> FaultSpec | None:
        return next((f.spec for f in self._active(kind, release)), None)

    def away(self, now: float | None = None) -> bool:
        """Whether the device's connection is down at ``now`` (``offline`` after its moment,
        ``late`` before it): the HTTP front end refuses it, the MQTT one disconnects it."""
        if not self.faults:
            return False
        now = self.clock() if now is None else now
        gone = any(now >= f.since + f.spec.param("after") for f in self._active("offline"))
        return gone or any(now < f.since + f.spec.param("after") for f in self._active("late"))

    def admit(self) -> Admission:
        if not self.faults:
            return Admission()
        if self.first_fault("unreachable") is not None or self.away():
            self.dropped += 1
            return Admission(drop="refused")
        for f in self._active("flaky"):
            if f.remaining > 0:
                f.remaining -= 1
                self.dropped += 1
                return Admission(drop="reset")
        delay = sum(f.spec.param("delay") for f in self._active("latency"))
        return Admission(delay_s=delay)

    # -- authentication ----------------------------------------------------------------------------
    def authenticate(self, authorization: str | None, claimed: str | None) -> SimReply | None:
        # The token first, as the agent does: an unauthenticated caller gets 401 whatever id.
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            presented.encode("utf-8", "replace"), self._token
        ):
            return refusal(401, "unauthorized", "missing or wrong bearer token")
        if claimed is None:
            return refusal(401, "unauthorized", "missing X-Fleetgate-Device header")
        if claimed != self.device.id:
            return refusal(403, "wrong-device", f"this agent is {self.device.id}, not {claimed}")
        return None

    # -- reports -----------------------------------------------------------------------------------
    def disk_free_mb(self) -> float:
        low = self.first_fault("low-disk")
        if low is not None:
            return low.param("free_mb")
        used = sum(r.footprint_mb for r in self.releases.values())
        return round(max(0.0, self.profile.disk_free_mb - used), 1)

    def app_running(self) -> bool:
        return self.current is not None and self.first_fault("start-fail") is None

    def ping(self) -> dict[str, Any]:
        uptime = round(self.clock() - self.started_at, 3)
        return {
            "id": self.device.id,
            "ok": True,
            "agent_version": AGENT_VERSION,
            "uptime_s": uptime,
        }

    def facts(self) -> dict[str, Any]:
        return {
            "id": self.device.id,
            "hardware": self.device.hardware,
            "arch": self.device.arch.value if self.device.arch else None,
            "ram_mb": self.profile.ram_usable_mb,
            "disk_free_mb": self.disk_free_mb(),
            # What enrolment and `registry refresh` read into the inventory.
            "disk_mb": self.device.resources.disk_mb if self.device.resources else None,
            "gpu": self.device.resources.gpu if self.device.resources else False,
            "reserve_mb": self.spec.reserve_mb,
            "software": dict(self.device.software),
            "agent_version": AGENT_VERSION,
            "current": self.current,
            "previous": self.previous,
            "rollback_available": self.previous is not None and self.previous in self.releases,
            "releases": sorted(self.releases),
            "state": self.activity,
            "last_seq": self.last_seq,
            "app_running": self.app_running(),
            "interrupted": None,
            "trial": None
            if self.trial is None or self.trial != self.current
            else {"release": self.trial, "state": "on-trial"},
            "reverted": self.reverted,
            "committed": dict(self.committed),
            "health": self.health(),  # issue 12: the pre-flight's baseline in the same call
        }

    def bends(self, now: float) -> Bends:
        """What the faults that apply at ``now`` do to a health reading."""
        errors = self.first_fault("errors")
        hot = self.first_fault("hot")
        factor = 1.0
        for f in self._active("latency"):
            factor *= f.spec.param("factor")
        surges = [f.spec for f in self._active("surge") if f.in_window(now)]
        leak_mb = sum(
            f.spec.param("mb_per_min") * max(0.0, now - max(f.since, self.switched_at)) / 60.0
            for f in self._active("leak")
        )  # a restart (any switch of release) frees what the app had leaked
        return Bends(
            error_rate=errors.param("rate") if errors is not None else None,
            latency_factor=factor,
            temperature_c=hot.param("temp") if hot is not None else None,
            crash_loop=self.first_fault("crash-loop") is not None,
            start_failed=self.first_fault("start-fail") is not None,
            surge_latency=sum(s.param("latency") for s in surges),
            surge_errors=sum(s.param("errors") for s in surges),
            leak_mb=leak_mb if self.app_running() else 0.0,
            silent=self.first_fault("silent") is not None,
        )

    def health(self) -> dict[str, Any]:
        now = self.clock()
        bends = self.bends(now)
        if self.traffic.started != self.switched_at:
            self.traffic = Traffic(self.switched_at)  # the app restarted: counters from zero
        body: dict[str, Any] = {"device_id": self.device.id}
        body.update(
            reading(
                self.noise,
                self.baseline,
                bends,
                running=self.current is not None,
                since_start_s=now - self.switched_at,
                mem_total_mb=self.profile.ram_usable_mb,
                traffic=self.traffic,
                now=now,
            )
        )
        body["disk_free_mb"] = None if bends.silent else self.disk_free_mb()
        body["release"] = self.current
        body["rollback_available"] = self.previous is not None and self.previous in self.releases
        if self.reverted is not None and self.reverted["to"] == self.current:
            body["reverted"] = {k: self.reverted[k] for k in ("reason", "message", "from", "to")}
        return body

    def self_revert(self, reason: str, message: str) -> bool:
        """The device reverts the release on trial by itself (the real agent's start counter,
        crash loop or trial deadline): back to ``previous``, reported in facts and health."""
        bad, target = self.current, self.previous
        if self.trial is None or self.trial != bad or target is None:
            return False
        logs = list(self.app_log)[-30:]
        switch(self, target)
        self.previous, self.trial = None, None
        self.reverted = {
            "reason": reason,
            "message": message,
            "from": bad,
            "to": target,
            "at": round(self.clock(), 3),
            "logs": logs,
        }
        self.log(f"reverted {bad} -> {target} by itself: {message}")
        return True

    def logs(self, lines: int) -> dict[str, Any]:
        lines = max(0, min(lines, 1000))
        if lines == 0:
            return {"app": [], "agent": []}
        return {"app": list(self.app_log)[-lines:], "agent": list(self.agent_log)[-lines:]}

    def snapshot(self) -> DeviceSnapshot:
        return DeviceSnapshot(
            id=self.device.id,
            current=self.current,
            previous=self.previous,
            releases=tuple(sorted(self.releases)),
            last_seq=self.last_seq,
            received=dict(self.counters.received),
            executed=dict(self.counters.executed),
            history=tuple(self.counters.history),
            faults=tuple(str(f.spec) for f in self.faults),
            dropped=self.dropped,
        )

    def log(self, line: str) -> None:
        self.agent_log.append(line)

    # -- commands ----------------------------------------------------------------------------------
    async def command(self, name: str, body: Any) -> SimReply:
        try:
            seq, deployment_id = validate(name, body)
        except Refused as exc:
            return exc.reply
        release = release_of(name, body, self)
        self.counters.received[(name, release)] += 1
        rec = self.records.get(seq)
        same = rec is not None and (rec.command, rec.deployment_id) == (name, deployment_id)
        if self.busy:
            if same and rec is not None and rec.status == "in-progress":
                msg = f"seq {seq} is still executing"
                busy = refusal(409, "in-progress", msg, retryable=True)
            else:
                msg = "another command is executing; seq not consumed"
                busy = refusal(409, "busy", msg, retryable=True)
            return self._note(seq, name, deployment_id, release, busy)
        if rec is None and seq <= self.last_seq:
            msg = f"seq {seq} is older than last_seq {self.last_seq}"
            return self._note(seq, name, deployment_id, release, refusal(409, "stale-seq", msg))
        jump = jump_problem(seq_base_of(seq), self.last_seq) if rec is None else None
        if jump is not None:
            return self._note(
                seq, name, deployment_id, release, refusal(409, "seq-out-of-range", jump)
            )
        if rec is not None and not same:
            msg = f"seq {seq} was used for {rec.command} of deployment {rec.deployment_id}"
            return self._note(seq, name, deployment_id, release, refusal(409, "seq-conflict", msg))
        if rec is not None and rec.status == "done" and rec.reply is not None:
            replay = SimReply(rec.reply.code, {**rec.reply.body, "replayed": True})
            return self._note(seq, name, deployment_id, release, replay, replayed=True)
        again = rec is not None  # finished with a retryable error: run it again
        params = dict(rec.params) if rec is not None else {}
        rec = Record(seq, name, deployment_id, "in-progress", params=params)
        self.records[seq] = rec
        self.last_seq = max(self.last_seq, seq)
        while len(self.records) > RECORD_SIZE:
            del self.records[min(self.records)]
        self.busy = True
        self.counters.executed[(name, release)] += 1
        self.log(f"{name} seq={seq} deployment={deployment_id}{' (again)' if again else ''}")
        try:
            handler = {
                "stage": stage,
                "activate": activate,
                "rollback": rollback,
                "commit": commit,
            }[name]
            reply = await handler(self, body, rec, again)
        except Refused as exc:
            reply = exc.reply
        finally:
            self.busy = False
            self.activity = "idle"
        rec.status = "retryable" if reply.body.get("retryable") else "done"
        rec.reply = reply
        outcome = reply.body.get("status") or reply.body.get("error")
        self.log(f"{name} seq={seq} -> {reply.code} {outcome}")
        return self._note(seq, name, deployment_id, release, reply)

    def _note(
        self, seq: int, name: str, dep: str, release: str, reply: SimReply, replayed: bool = False
    ) -> SimReply:
        outcome = str(reply.body.get("status") or reply.body.get("error") or reply.code)
        self.counters.history.append(CommandEvent(seq, name, dep, release, outcome, replayed))
        return reply
