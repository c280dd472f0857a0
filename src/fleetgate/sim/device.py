"""``VirtualDevice``: one simulated agent — the protocol's semantics without a disk or an app.

One model, two front ends: the aiohttp server (``sim/server.py``) and the in-process
``MemoryTransport`` both call the same methods, so the engine's unit tests and the HTTP
simulator cannot disagree about what a device does.

Contract (docs/protocol.md, mirrored from the real agent):
- ``authenticate`` applies §1's checks in order (wrong device 403, bad token 401, no device
  header 401).
- ``command`` applies §4's idempotency: one command at a time (``busy``/``in-progress`` do not
  consume a seq), replay of a finished seq with ``"replayed": true``, ``stale-seq``,
  ``seq-conflict``; only retryable failures are executed again. The record keeps 100 seqs.
- stage: manifest (optionally signature-checked) → already-installed/-staged → arch → disk
  (``size + max(requires.disk_mb, size) + reserve``) → simulated transfer of ``size`` bytes at
  the link speed. No bytes are fetched.
- activate keeps the old release as ``previous``; rollback switches back and clears
  ``previous``; neither rolls back by itself.
- ``admit`` is the network: it says whether a request is dropped (``unreachable``, ``flaky``)
  and how long the answer is delayed (``latency:delay``).
- Every request the device acts on is counted in ``received``/``executed`` keyed by
  ``(command, release)`` and appended to ``history``: crash tests prove from these that no
  device staged or activated one release twice.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleetgate import __version__
from fleetgate.core.manifest import manifest_from_dict
from fleetgate.core.model import Device, Manifest
from fleetgate.errors import FleetgateError
from fleetgate.sim.device_state import (
    CommandEvent,
    DeviceSnapshot,
    Record,
    ReleaseInfo,
    SimReply,
    refusal,
)
from fleetgate.sim.faults import FaultSpec
from fleetgate.sim.health import Baseline, Bends, Noise, reading

if TYPE_CHECKING:
    from fleetgate.sim.fleetspec import FleetSpec, HardwareProfile

MIB = 1024 * 1024
RECORD_SIZE = 100
KEEP_RELEASES = 2
RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
AGENT_VERSION = f"{__version__}+sim"
COMMANDS = ("stage", "activate", "rollback")


class Refused(Exception):
    def __init__(self, reply: SimReply) -> None:
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Admission:
    drop: str | None = None  # "refused" (unreachable) | "reset" (flaky) | None
    delay_s: float = 0.0


@dataclass
class ActiveFault:
    spec: FaultSpec
    remaining: int = 0  # flaky: drops left


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
        self.last_seq = 0
        self.records: dict[int, Record] = {}
        self.activity = "idle"
        self.busy = False
        self.faults: list[ActiveFault] = []
        self.dropped = 0  # requests the network faults swallowed
        self.counters = _Counters()
        self.app_log: deque[str] = deque(maxlen=1000)
        self.agent_log: deque[str] = deque(maxlen=1000)

    # -- faults ------------------------------------------------------------------------------------
    def add_fault(self, spec: FaultSpec) -> None:
        remaining = int(spec.param("k")) if spec.kind == "flaky" else 0
        self.faults.append(ActiveFault(spec, remaining))

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

    def _first(self, kind: str, release: str | None = None) -> FaultSpec | None:
        return next((f.spec for f in self._active(kind, release)), None)

    def admit(self) -> Admission:
        if not self.faults:
            return Admission()
        if self._first("unreachable") is not None:
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
        if claimed is not None and claimed != self.device.id:
            return refusal(403, "wrong-device", f"this agent is {self.device.id}, not {claimed}")
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), self._token):
            return refusal(401, "unauthorized", "missing or wrong bearer token")
        if claimed is None:
            return refusal(401, "unauthorized", "missing X-Fleetgate-Device header")
        return None

    # -- reports -----------------------------------------------------------------------------------
    def disk_free_mb(self) -> float:
        low = self._first("low-disk")
        if low is not None:
            return low.param("free_mb")
        used = sum(r.footprint_mb for r in self.releases.values())
        return round(max(0.0, self.profile.disk_free_mb - used), 1)

    def app_running(self) -> bool:
        return self.current is not None and self._first("start-fail") is None

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
            "arch": self.device.arch.value,
            "ram_mb": self.profile.ram_usable_mb,
            "disk_free_mb": self.disk_free_mb(),
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
        }

    def health(self) -> dict[str, Any]:
        errors = self._first("errors")
        hot = self._first("hot")
        factor = 1.0
        for f in self._active("latency"):
            factor *= f.spec.param("factor")
        bends = Bends(
            error_rate=errors.param("rate") if errors is not None else None,
            latency_factor=factor,
            temperature_c=hot.param("temp") if hot is not None else None,
            crash_loop=self._first("crash-loop") is not None,
            start_failed=self._first("start-fail") is not None,
        )
        body: dict[str, Any] = {"device_id": self.device.id}
        body.update(
            reading(
                self.noise,
                self.baseline,
                bends,
                running=self.current is not None,
                since_start_s=self.clock() - self.switched_at,
                mem_total_mb=self.profile.ram_usable_mb,
            )
        )
        body["disk_free_mb"] = self.disk_free_mb()
        body["release"] = self.current
        return body

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

    def _log(self, line: str) -> None:
        self.agent_log.append(line)

    # -- commands ----------------------------------------------------------------------------------
    async def command(self, name: str, body: Any) -> SimReply:
        try:
            seq, deployment_id = _validate(name, body)
        except Refused as exc:
            return exc.reply
        release = _release_of(name, body, self)
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
        self._log(f"{name} seq={seq} deployment={deployment_id}{' (again)' if again else ''}")
        try:
            handler = {"stage": self._stage, "activate": self._activate, "rollback": self._rollback}
            reply = await handler[name](body, rec, again)
        except Refused as exc:
            reply = exc.reply
        finally:
            self.busy = False
            self.activity = "idle"
        rec.status = "retryable" if reply.body.get("retryable") else "done"
        rec.reply = reply
        outcome = reply.body.get("status") or reply.body.get("error")
        self._log(f"{name} seq={seq} -> {reply.code} {outcome}")
        return self._note(seq, name, deployment_id, release, reply)

    def _note(
        self, seq: int, name: str, dep: str, release: str, reply: SimReply, replayed: bool = False
    ) -> SimReply:
        outcome = str(reply.body.get("status") or reply.body.get("error") or reply.code)
        self.counters.history.append(CommandEvent(seq, name, dep, release, outcome, replayed))
        return reply

    def _manifest(self, body: dict[str, Any]) -> Manifest:
        raw: str = body["manifest"]
        try:
            if self.spec.public_key is not None:
                from fleetgate.artifacts.signing import verify_manifest

                return verify_manifest(raw.encode("utf-8"), body["signature"], self.spec.public_key)
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("manifest is not a JSON object")
            manifest = manifest_from_dict(data, where="manifest")
        except (ValueError, FleetgateError) as exc:
            raise Refused(refusal(422, "integrity-error", f"manifest: {exc}")) from None
        if manifest.size is None or manifest.sha256 is None:
            msg = "signed manifest does not state the payload size and sha256"
            raise Refused(refusal(422, "integrity-error", msg))
        return manifest

    def _prune(self, extra: int) -> None:
        keep = {self.current, self.previous}
        others = [r for r in self.releases if r not in keep]  # oldest first
        for old in others[: max(0, len(others) - max(0, extra))]:
            del self.releases[old]

    async def _stage(self, body: dict[str, Any], rec: Record, again: bool) -> SimReply:
        self.activity = "staging"
        manifest = self._manifest(body)
        assert manifest.size is not None
        rid = manifest.release_id
        if rid == self.current:
            return SimReply(200, {"status": "already-installed", "release": rid})
        if rid in self.releases:
            first_time = again and rec.params.get("release") == rid
            status = "staged" if first_time else "already-staged"
            return SimReply(200, {"status": status, "release": rid})
        rec.params["release"] = rid
        arches = {a.value for a in manifest.requires.arch}
        if arches and self.device.arch.value not in arches:
            msg = f"{rid} requires arch {sorted(arches)}, device is {self.device.arch.value}"
            raise Refused(refusal(409, "incompatible", msg))
        self._prune(KEEP_RELEASES - 2)
        unpacked = max(manifest.requires.disk_mb * MIB, manifest.size)
        need_mb = (manifest.size + unpacked) / MIB + self.spec.reserve_mb
        free = self.disk_free_mb()
        if free < need_mb:
            msg = (
                f"need {need_mb:.1f} MiB (artifact + unpacked + reserve) while keeping current "
                f"and previous releases; {free:.1f} MiB free"
            )
            raise Refused(refusal(507, "insufficient-disk", msg))
        slow = self._first("slow-link")
        kbps = slow.param("kbps") if slow is not None else self.spec.link_kbps
        transfer_s = manifest.size * 8 / (kbps * 1000)
        if transfer_s > 0:
            await asyncio.sleep(transfer_s)
        footprint = (manifest.size + unpacked) / MIB
        self.releases[rid] = ReleaseInfo(rid, manifest.version, manifest.size, footprint)
        self._log(f"staged {rid} ({manifest.size} bytes in {transfer_s:.2f}s)")
        return SimReply(200, {"status": "staged", "release": rid})

    def _switch(self, release: str) -> None:
        self.current = release
        self.switched_at = self.clock()
        self.app_log.append(f"[{release}] starting")

    async def _activate(self, body: dict[str, Any], rec: Record, again: bool) -> SimReply:
        rid: str = body["release"]
        if rid not in self.releases:
            raise Refused(refusal(404, "unknown-release", f"{rid} is not staged on this device"))
        self.activity = "activating"
        old = self.current
        if rid != old:
            rec.params.update({"from": old, "to": rid})
            if self.spec.activate_s > 0:
                await asyncio.sleep(self.spec.activate_s)
            self.previous = old if old is not None else self.previous
            self._switch(rid)
        base = {"release": rid, "previous": self.previous}
        failed = self._first("start-fail")
        if failed is not None:
            code = int(failed.param("code"))
            error = f"app exited with code {code} before becoming healthy"
            self.app_log.extend(
                [f"[{rid}] Traceback (most recent call last):", f"[{rid}] SystemExit: {code}"]
            )
            logs = list(self.app_log)[-30:]
            return SimReply(200, {"status": "start-failed", **base, "error": error, "logs": logs})
        self.app_log.append(f"[{rid}] healthy")
        self._prune(KEEP_RELEASES - 1)
        return SimReply(200, {"status": "active", **base})

    async def _rollback(self, body: dict[str, Any], rec: Record, again: bool) -> SimReply:
        current = self.current
        explicit = body.get("to")
        target = explicit or self.previous
        if explicit is not None and explicit not in self.releases:
            raise Refused(refusal(404, "unknown-release", f"{explicit} is not on this device"))
        if target is None or target not in self.releases:
            raise Refused(refusal(409, "no-rollback-copy", "no previous release on this device"))
        if self._first("rollback-fail") is not None:
            msg = f"rollback to {target} failed: OSError: [Errno 5] Input/output error"
            self._log(msg)
            raise Refused(refusal(500, "internal", msg))
        self.activity = "rolling-back"
        left = current if target != current else None
        if target != current:
            rec.params.update({"from": left, "to": target})
            if self.spec.activate_s > 0:
                await asyncio.sleep(self.spec.activate_s)
            self._switch(target)
        self.previous = None
        reply: dict[str, Any] = {"status": "rolled-back", "release": target, "from": left}
        failed = self._first("start-fail")
        reply["app_healthy"] = failed is None
        if failed is not None:
            reply["error"] = f"app exited with code {int(failed.param('code'))}"
            reply["logs"] = list(self.app_log)[-30:]
        return SimReply(200, reply)


def _validate(command: str, body: Any) -> tuple[int, str]:
    if command not in COMMANDS:
        raise Refused(refusal(404, "not-found", f"unknown command {command!r}"))
    if not isinstance(body, dict):
        raise Refused(refusal(400, "bad-request", "body must be a JSON object"))
    seq = body.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise Refused(refusal(400, "bad-request", "seq: expected an integer >= 1"))
    dep = body.get("deployment_id")
    if not isinstance(dep, str) or not dep or len(dep) > 200:
        raise Refused(refusal(400, "bad-request", "deployment_id: expected a non-empty string"))
    if command == "stage":
        for key in ("manifest", "signature", "url"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise Refused(refusal(400, "bad-request", f"{key}: expected a non-empty string"))
        if not body["url"].startswith(("http://", "https://")):
            raise Refused(refusal(400, "bad-request", "url: expected an http(s) URL"))
    elif command == "activate":
        if not isinstance(body.get("release"), str) or not RELEASE_ID_RE.match(body["release"]):
            raise Refused(refusal(400, "bad-request", "release: expected a release id"))
    else:
        to = body.get("to")
        if to is not None and (not isinstance(to, str) or not RELEASE_ID_RE.match(to)):
            raise Refused(refusal(400, "bad-request", "to: expected a release id"))
    return seq, dep


def _release_of(command: str, body: dict[str, Any], dev: VirtualDevice) -> str:
    """The release a command is about, for the counters (``?`` if the manifest is garbage)."""
    if command == "activate":
        return str(body["release"])
    if command == "rollback":
        return str(body.get("to") or dev.previous or "?")
    try:
        data = json.loads(body["manifest"])
        return manifest_from_dict(data).release_id if isinstance(data, dict) else "?"
    except (ValueError, FleetgateError):
        return "?"
