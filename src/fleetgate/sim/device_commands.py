"""What a virtual device does for ``stage``, ``activate``, ``rollback`` and ``commit`` (after
the seq record in ``VirtualDevice.command`` decided the command runs), and the request
validation.

Mirrors the real agent's handlers (agent/commands.py) without disk or processes:
- stage: manifest (signature-checked when the fleet has a public key, else parsed) →
  already-installed / already-staged → ``requires.arch`` → prune to current + previous → disk
  (``size + max(requires.disk_mb, size) + reserve``) → transfer time ``size / link speed``;
- activate: ``previous`` := old ``current``; a ``start-fail`` fault answers ``start-failed``
  with logs (still 200); nothing is rolled back by the device itself;
- rollback: to ``to`` or ``previous`` (``no-rollback-copy`` without one), ``previous`` := null;
  a ``rollback-fail`` fault answers ``500 internal`` and leaves the device where it was; after
  a self-revert it is answered from the revert (the device already runs the known-good release);
- commit (issue 10): the current release leaves its trial (``409 not-current`` for another);
  the committed version is recorded per name. The downgrade floor is *not* enforced by the
  virtual device (the real agent's is, tests/agent/test_agent_downgrade.py);
- a release on trial with a ``reboot-loop`` fault is reverted by the device during its
  activate (``start-failed`` with ``"reverted": true``), like the real agent after
  ``trial_max_starts`` starts; ``VirtualDevice.self_revert`` lets a test revert at any moment.
A refusal is raised as ``Refused`` carrying the protocol reply.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import TYPE_CHECKING, Any

from fleetgate.core.disk import stage_mb_needed
from fleetgate.core.manifest import manifest_from_dict
from fleetgate.core.model import Manifest
from fleetgate.core.seqwindow import MAX_SEQ, window_problem
from fleetgate.errors import FleetgateError
from fleetgate.sim.device_state import Record, Refused, ReleaseInfo, SimReply, refusal

if TYPE_CHECKING:
    from fleetgate.sim.device import VirtualDevice

MIB = 1024 * 1024
KEEP_RELEASES = 2
RELEASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
COMMANDS = ("stage", "activate", "rollback", "commit")


def read_manifest(dev: VirtualDevice, body: dict[str, Any]) -> Manifest:
    raw: str = body["manifest"]
    try:
        if dev.spec.public_key is not None:
            from fleetgate.artifacts.signing import verify_manifest

            return verify_manifest(raw.encode("utf-8"), body["signature"], dev.spec.public_key)
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


def prune(dev: VirtualDevice, extra: int) -> None:
    keep = {dev.current, dev.previous}
    others = [r for r in dev.releases if r not in keep]  # oldest first
    for old in others[: max(0, len(others) - max(0, extra))]:
        del dev.releases[old]


async def stage(dev: VirtualDevice, body: dict[str, Any], rec: Record, again: bool) -> SimReply:
    dev.activity = "staging"
    manifest = read_manifest(dev, body)
    assert manifest.size is not None
    rid = manifest.release_id
    if rid == dev.current:
        return SimReply(200, {"status": "already-installed", "release": rid})
    if rid in dev.releases:
        first_time = again and rec.params.get("release") == rid
        status = "staged" if first_time else "already-staged"
        return SimReply(200, {"status": status, "release": rid})
    rec.params["release"] = rid
    arches = {a.value for a in manifest.requires.arch}
    arch = dev.device.arch.value if dev.device.arch else "?"
    if arches and arch not in arches:
        msg = f"{rid} requires arch {sorted(arches)}, device is {arch}"
        raise Refused(refusal(409, "incompatible", msg))
    prune(dev, KEEP_RELEASES - 2)
    unpacked = max(manifest.requires.disk_mb * MIB, manifest.size)
    need_mb = stage_mb_needed(manifest.size, manifest.requires.disk_mb, dev.spec.reserve_mb)
    free = dev.disk_free_mb()
    if free < need_mb:
        msg = (
            f"need {need_mb:.1f} MiB (artifact + unpacked + reserve) while keeping current "
            f"and previous releases; {free:.1f} MiB free"
        )
        raise Refused(refusal(507, "insufficient-disk", msg))
    slow = dev.first_fault("slow-link")
    kbps = slow.param("kbps") if slow is not None else dev.spec.link_kbps
    transfer_s = manifest.size * 8 / (kbps * 1000)
    if transfer_s > 0:
        await asyncio.sleep(transfer_s)
    footprint = (manifest.size + unpacked) / MIB
    dev.releases[rid] = ReleaseInfo(rid, manifest.version, manifest.size, footprint)
    dev.log(f"staged {rid} ({manifest.size} bytes in {transfer_s:.2f}s)")
    return SimReply(200, {"status": "staged", "release": rid})


def switch(dev: VirtualDevice, release: str) -> None:
    dev.current = release
    dev.switched_at = dev.clock()
    dev.app_log.append(f"[{release}] starting")


async def activate(dev: VirtualDevice, body: dict[str, Any], rec: Record, again: bool) -> SimReply:
    rid: str = body["release"]
    if rid not in dev.releases:
        raise Refused(refusal(404, "unknown-release", f"{rid} is not staged on this device"))
    dev.activity = "activating"
    old = dev.current
    if rid != old:
        rec.params.update({"from": old, "to": rid})
        if dev.spec.activate_s > 0:
            await asyncio.sleep(dev.spec.activate_s)
        dev.previous = old if old is not None else dev.previous
        switch(dev, rid)
        dev.trial = rid
        dev.reverted = None
    base = {"release": rid, "previous": dev.previous}
    if dev.trial == rid and dev.first_fault("reboot-loop") is not None:
        dev.app_log.append(f"[{rid}] started; the device rebooted")
        dev.self_revert("start-limit", "started 3 times without a commit: it kills the agent")
        sr = dev.reverted or {}
        return SimReply(
            200,
            {
                "status": "start-failed",
                **base,
                "error": f"reverted by the device: {sr.get('message')}",
                "logs": list(sr.get("logs", [])),
                "reverted": True,
            },
        )
    failed = dev.first_fault("start-fail")
    if failed is not None:
        code = int(failed.param("code"))
        error = f"app exited with code {code} before becoming healthy"
        dev.app_log.extend(
            [f"[{rid}] Traceback (most recent call last):", f"[{rid}] SystemExit: {code}"]
        )
        logs = list(dev.app_log)[-30:]
        return SimReply(200, {"status": "start-failed", **base, "error": error, "logs": logs})
    dev.app_log.append(f"[{rid}] healthy")
    prune(dev, KEEP_RELEASES - 1)
    reply: dict[str, Any] = {"status": "active", **base}
    if body.get("with_health") is True:
        reply["health"] = dev.health()  # issue 12: the smoke test's sample, in this answer
    return SimReply(200, reply)


async def rollback(dev: VirtualDevice, body: dict[str, Any], rec: Record, again: bool) -> SimReply:
    current = dev.current
    explicit = body.get("to")
    target = explicit or dev.previous
    sr = dev.reverted if dev.reverted is not None and dev.reverted["to"] == current else None
    if target is None and sr is not None:
        target = current  # reverted by itself: already on the known-good release
    if explicit is not None and explicit not in dev.releases:
        raise Refused(refusal(404, "unknown-release", f"{explicit} is not on this device"))
    if target is None or target not in dev.releases:
        raise Refused(refusal(409, "no-rollback-copy", "no previous release on this device"))
    if dev.first_fault("rollback-fail") is not None:
        msg = f"rollback to {target} failed: OSError: [Errno 5] Input/output error"
        dev.log(msg)
        raise Refused(refusal(500, "internal", msg))
    dev.activity = "rolling-back"
    left = current if target != current else None
    if target != current:
        rec.params.update({"from": left, "to": target})
        if dev.spec.activate_s > 0:
            await asyncio.sleep(dev.spec.activate_s)
        switch(dev, target)
        dev.trial, dev.reverted = None, None
    dev.previous = None
    reply: dict[str, Any] = {"status": "rolled-back", "release": target, "from": left}
    if target == current and sr is not None:
        reply["from"] = sr["from"]
        reply["self_reverted"] = {k: sr[k] for k in ("reason", "message", "at")}
    failed = dev.first_fault("start-fail")
    reply["app_healthy"] = failed is None
    if failed is not None:
        reply["error"] = f"app exited with code {int(failed.param('code'))}"
        reply["logs"] = list(dev.app_log)[-30:]
    if body.get("with_health") is True:
        reply["health"] = dev.health()  # issue 12: the first recovery check, in this answer
    return SimReply(200, reply)


async def commit(dev: VirtualDevice, body: dict[str, Any], rec: Record, again: bool) -> SimReply:
    rid: str = body["release"]
    if rid != dev.current:
        sr = dev.reverted
        msg = (
            f"the device reverted {rid} by itself ({sr['message']}); it runs {dev.current}"
            if sr is not None and sr["from"] == rid
            else f"{rid} is not the current release ({dev.current})"
        )
        raise Refused(refusal(409, "not-current", msg))
    fresh = dev.trial == rid
    dev.trial = None
    info = dev.releases.get(rid)
    name, version = (rid.rsplit("-", 2)[0], info.version) if info else (rid, None)
    if version is not None:
        dev.committed[name] = version  # (the real agent keeps the highest; see its tests)
    dev.log(f"committed {rid}")
    status = "committed" if fresh else "already-committed"
    return SimReply(200, {"status": status, "release": rid, "floor": dict(dev.committed)})


def validate(command: str, body: Any) -> tuple[int, str]:
    if command not in COMMANDS:
        raise Refused(refusal(404, "not-found", f"unknown command {command!r}"))
    if not isinstance(body, dict):
        raise Refused(refusal(400, "bad-request", "body must be a JSON object"))
    seq = body.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise Refused(refusal(400, "bad-request", "seq: expected an integer >= 1"))
    seq_base = body.get("seq_base")
    if isinstance(seq_base, bool) or not isinstance(seq_base, int) or seq_base < 0:
        raise Refused(refusal(400, "bad-request", "seq_base: expected an integer >= 0"))
    if seq >= MAX_SEQ:
        raise Refused(refusal(409, "seq-out-of-range", f"seq {seq} is not below 2**53"))
    problem = window_problem(seq, seq_base)
    if problem is not None:
        raise Refused(refusal(400, "bad-request", problem))
    dep = body.get("deployment_id")
    if not isinstance(dep, str) or not dep or len(dep) > 200:
        raise Refused(refusal(400, "bad-request", "deployment_id: expected a non-empty string"))
    if command == "stage":
        for key in ("manifest", "signature", "url"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise Refused(refusal(400, "bad-request", f"{key}: expected a non-empty string"))
        if not body["url"].startswith(("http://", "https://")):
            raise Refused(refusal(400, "bad-request", "url: expected an http(s) URL"))
    elif command in ("activate", "commit"):
        if not isinstance(body.get("release"), str) or not RELEASE_ID_RE.match(body["release"]):
            raise Refused(refusal(400, "bad-request", "release: expected a release id"))
    else:
        to = body.get("to")
        if to is not None and (not isinstance(to, str) or not RELEASE_ID_RE.match(to)):
            raise Refused(refusal(400, "bad-request", "to: expected a release id"))
    return seq, dep


def release_of(command: str, body: dict[str, Any], dev: VirtualDevice) -> str:
    """The release a command is about, for the counters (``?`` if the manifest is garbage)."""
    if command in ("activate", "commit"):
        return str(body["release"])
    if command == "rollback":
        return str(body.get("to") or dev.previous or "?")
    try:
        data = json.loads(body["manifest"])
        return manifest_from_dict(data).release_id if isinstance(data, dict) else "?"
    except (ValueError, FleetgateError):
        return "?"
