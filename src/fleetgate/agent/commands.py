"""The commands that change a device: stage, activate, rollback, commit.

Each handler is safe to run again after a crash at any point (docs/protocol.md §3–4): it looks
at the disk and the state first and only does what is still missing. Invariants:
- stage: the trusted root is brought up to date and the signatures checked before anything
  else, the disk before any download; the extracted tree must match the signed file list; a
  failed stage leaves nothing in ``releases/`` (its ``.staging-*`` work is deleted on every
  error path);
- activate and rollback (and a self-revert): the target slot is re-verified (signature, then
  every file against the signed list) before anything is stopped or switched: a slot edited on
  disk is refused with ``422 integrity-error`` naming the file, and the device stays where it is;
- activate: the switch is the atomic ``current`` link replacement and puts the release on
  trial (agent/trial.py); a failed start is reported (``start-failed`` with logs), never hidden
  and never silently rolled back (a self-revert of a release on trial is reported too);
- rollback: kills the process group of the release being left and runs nothing from it;
  after a self-revert (agent/trial.py) it answers from the revert: the device is already back;
- commit: ends the current release's trial and raises the downgrade floor (agent/downgrade.py).

Blocking work (hashing, extraction, fsync, rmtree) runs in threads. The signature, download
and extraction modules (``cryptography``, ``tarfile``) are imported on first use: an agent that
has not staged anything since it started stays ~10 MiB smaller (docs/agent.md, idle RSS).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import aiohttp

from fleetgate.agent import downgrade, trial
from fleetgate.agent.hooks import pause_point
from fleetgate.agent.probes import ProbeTarget
from fleetgate.agent.releases import valid_release_id
from fleetgate.agent.reply import CommandError, Reply, bad_request
from fleetgate.agent.slotcheck import SlotMismatch, verify_slot
from fleetgate.agent.state import CommandRecord
from fleetgate.agent.supervisor import Launch, ProcessSupervisor, run_oneshot
from fleetgate.core.disk import stage_bytes_needed
from fleetgate.core.model import ArtifactKind, Manifest
from fleetgate.errors import FleetgateError, IntegrityError, TransportError

if TYPE_CHECKING:
    from fleetgate.agent.service import AgentService

log = logging.getLogger("fleetgate.agent")

MIB = 1024 * 1024
PYTHON_NAMES = ("python3", "python")
LOG_TAIL = 30


def validate_body(command: str, body: dict[str, Any]) -> None:
    if command == "stage":
        for key in ("manifest", "signature", "url"):
            if not isinstance(body.get(key), str) or not body[key]:
                raise bad_request(f"{key}: expected a non-empty string")
        if not body["url"].startswith(("http://", "https://")):
            raise bad_request("url: expected an http(s) URL")
        auth = body.get("downgrade_authorization")
        if auth is not None and (
            not isinstance(auth, dict)
            or not isinstance(auth.get("document"), str)
            or not isinstance(auth.get("signature"), str)
        ):
            raise bad_request("downgrade_authorization: expected {document, signature} strings")
        root_url = body.get("root_url")
        if root_url is not None and (
            not isinstance(root_url, str) or not root_url.startswith(("http://", "https://"))
        ):
            raise bad_request("root_url: expected an http(s) URL")
    elif command in ("activate", "commit"):
        if not valid_release_id(body.get("release")):
            raise bad_request("release: expected a release id (name-version-sha8)")
    elif command == "rollback":
        to = body.get("to")
        if to is not None and not valid_release_id(to):
            raise bad_request("to: expected a release id")


# -- running a release ----------------------------------------------------------------------------
def _subst(value: str, port: int) -> str:
    return value.replace("${APP_PORT}", str(port))


def make_launch(svc: AgentService, release_id: str, manifest: Manifest) -> Launch:
    """The argv/env/cwd for a release: ``${APP_PORT}`` substituted, a leading ``python3``
    resolved to the agent's own interpreter."""
    from fleetgate.agent.service import child_env  # the service module imports this one

    port = svc.config.app_port
    cmd = (
        manifest.run.reload_command
        if manifest.kind is ArtifactKind.CONFIG
        else manifest.run.command
    )
    argv = [_subst(a, port) for a in cmd]
    if argv and argv[0] in PYTHON_NAMES:
        argv[0] = sys.executable
    cwd = svc.store.release_dir(release_id)
    env = child_env(svc.config)
    # A slot is immutable content, checked file by file before every switch: a Python app must
    # not drop __pycache__ into it (a manifest may still say otherwise in run.env).
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update({k: _subst(v, port) for k, v in manifest.run.env.items()})
    env["FLEETGATE_RELEASE_DIR"] = str(cwd)
    env["APP_PORT"] = str(port)
    return Launch(
        release_id=release_id,
        cwd=cwd,
        argv=tuple(argv),
        env=env,
        uid=svc.config.run_as_uid,
        gid=svc.config.run_as_gid,
    )


async def _verify_files(svc: AgentService, release_id: str, manifest: Manifest) -> str | None:
    """None if the slot holds exactly the signed file list (or has none: a slot staged before
    verified slots, logged); else the first difference, naming the file. Hashes in a thread."""
    if manifest.files is None:
        log.warning(
            "%s: no signed file list (staged before verified slots): not checked", release_id
        )
        return None
    t0 = time.monotonic()
    try:
        hashed = await asyncio.to_thread(
            verify_slot, svc.store.release_dir(release_id), manifest.files
        )
    except SlotMismatch as exc:
        return f"{release_id}: {exc}"
    log.info(
        "%s: %d entries, %.1f MiB verified in %.0f ms",
        release_id,
        len(manifest.files),
        hashed / MIB,
        (time.monotonic() - t0) * 1000,
    )
    return None


async def startup_check(
    svc: AgentService, release_id: str, manifest: Manifest, raw: bytes
) -> str | None:
    """Before start-up runs the current release: its stored manifest must be the one the stage
    accepted (digest in ``trust/accepted``) and the slot must match its file list. Standard
    library only (no signature check: that needs ``cryptography``, see docs/agent.md)."""
    if manifest.files is None:
        return await _verify_files(svc, release_id, manifest)  # a slot from before: logged
    rec = await asyncio.to_thread(svc.trust.accepted, release_id)
    if rec is None:
        # Staged by an agent from before stage records (a new-format bundle it did not check):
        # the files are checked; the next activate or rollback checks the signature and records.
        log.warning("%s: no stage record: stored manifest not compared", release_id)
    elif rec.get("manifest_sha256") != hashlib.sha256(raw).hexdigest():
        return f"{release_id}: stored manifest changed since the stage accepted it"
    return await _verify_files(svc, release_id, manifest)


async def _load_verified(
    svc: AgentService, release_id: str, *, rollback: bool
) -> tuple[Manifest, str | None]:
    """The staged manifest, re-authenticated, and the slot's files checked, before a switch: a
    manifest or a file edited on disk since the stage must not be run (422, nothing switched).

    activate: the manifest must satisfy the *current* root (a release signed by a since revoked
    key is not switched to). rollback: the root the slot was accepted under (``trust/accepted``),
    or any root of the verified chain, is enough — a rollback must always be possible — and a
    signing key the current root no longer lists is reported as a warning (second value)."""
    from fleetgate.artifacts.signing import verify_manifest_keys

    current = svc.trusted_root()
    try:
        _m, raw, signature = await asyncio.to_thread(svc.store.load_manifest, release_id)
    except (OSError, ValueError, FleetgateError) as exc:
        raise CommandError(422, "integrity-error", f"{release_id}: stored manifest: {exc}") from exc
    rec = await asyncio.to_thread(svc.trust.accepted, release_id)
    roots = [current]
    if rollback:
        chain = list(reversed(svc.trust.chain()))
        version = rec.get("root_version") if rec else None
        at = svc.trust.root_at(version) if isinstance(version, int) else None
        roots = [at, *chain] if at is not None else chain
    first: IntegrityError | None = None
    for root in roots:
        try:
            manifest, keyids = verify_manifest_keys(raw, signature, root)
            used = root
            break
        except IntegrityError as exc:
            first = first or exc
    else:
        raise CommandError(422, "integrity-error", f"{release_id}: stored manifest: {first}")
    warning = None
    revoked = sorted(set(keyids) - set(current.release_keyids))
    if rollback and revoked and len(keyids) - len(revoked) < current.roles["targets"].threshold:
        warning = (
            f"{release_id} is signed by key(s) {', '.join(k[:12] for k in revoked)} that trusted "
            f"root v{current.version} no longer lists; rolled back to it because a rollback "
            "is always allowed"
        )
        log.warning("%s", warning)
    problem = await _verify_files(svc, release_id, manifest)
    if problem is not None:
        log.error("refusing to switch to %s: %s", release_id, problem)
        raise CommandError(422, "integrity-error", problem)
    if rec is None and manifest.files is not None:
        # Staged by an agent from before stage records: record it now that it checked out, so
        # that start-up compares the stored manifest from now on.
        await asyncio.to_thread(svc.trust.record, release_id, raw, used.version, keyids)
    return manifest, warning


async def start_release(svc: AgentService, release_id: str, manifest: Manifest) -> Manifest:
    """(Re)start ``release_id``'s app (or run a config release's reload command)."""
    port = svc.config.app_port
    svc.set_probe_target(
        ProbeTarget(
            release_id,
            _subst(manifest.run.health_url, port) if manifest.run.health_url else None,
            _subst(manifest.run.metrics_url, port) if manifest.run.metrics_url else None,
        )
    )
    launch = make_launch(svc, release_id, manifest)
    svc.current_kind = manifest.kind
    svc.app_started_at = time.monotonic()
    if manifest.kind is ArtifactKind.CONFIG:
        svc.reload_error = None
        if launch.argv:
            code, lines = await run_oneshot(launch, svc.config.health_timeout_s)
            svc.supervisor.logs.extend(lines)
            if code != 0:
                svc.reload_error = f"reload command failed ({code})"
        return manifest
    await svc.supervisor.start(launch)
    return manifest


async def app_up_without_url(svc: AgentService) -> bool:
    if svc.state.current is None:
        return False
    if svc.prober.target is None or svc.reload_error is not None:
        return False
    return await svc.supervisor.is_running() or svc.current_kind is ArtifactKind.CONFIG


async def wait_healthy(svc: AgentService, manifest: Manifest, started: bool) -> str | None:
    """None once the app is healthy; else why not. Fails fast when the app exits first.
    ``started``: this command (re)started the app, so every exit since counts (even a spawn
    that failed before this call)."""
    sup = svc.supervisor
    if manifest.kind is ArtifactKind.CONFIG:
        if svc.reload_error is not None:
            return svc.reload_error
        if manifest.run.health_url is None:
            return None
    exits0 = 0 if started else sup.exits
    deadline = time.monotonic() + svc.config.health_timeout_s
    url = svc.prober.target.health_url if svc.prober.target else None
    if url is None:  # no health URL: the process must simply stay up for a second
        await asyncio.sleep(min(1.0, svc.config.health_timeout_s))
        if sup.exits > exits0 or not await sup.is_running():
            return sup.last_exit or "app is not running"
        return None
    while True:
        if manifest.kind is not ArtifactKind.CONFIG and sup.exits > exits0:
            return f"{sup.last_exit or 'app exited'} before becoming healthy"
        ok, _latency = await svc.prober.probe_health()
        if ok:
            return None
        if time.monotonic() >= deadline:
            return f"{url} not healthy after {svc.config.health_timeout_s:g}s"
        await asyncio.sleep(0.2)


async def app_healthy_now(svc: AgentService) -> bool:
    """A live look: the health URL answers 2xx (or, without one, the app runs), no crash loop."""
    if svc.supervisor.crash_loop:
        return False
    target = svc.prober.target
    if target is not None and target.health_url is not None:
        ok, _latency = await svc.prober.probe_health()
        return ok
    return await app_up_without_url(svc)


def _tail(svc: AgentService) -> list[str]:
    return log_tail(svc, LOG_TAIL)


def log_tail(svc: AgentService, lines: int) -> list[str]:
    return list(svc.supervisor.logs)[-lines:]


async def _switch(svc: AgentService, release_id: str, kind: str) -> None:
    await asyncio.to_thread(svc.store.switch_current, release_id)
    await pause_point(f"{kind}:after-link")


# -- stage ----------------------------------------------------------------------------------------
async def stage(svc: AgentService, body: dict[str, Any], rec: CommandRecord, again: bool) -> Reply:
    svc.activity = "staging"
    from fleetgate.artifacts.extract import safe_extract
    from fleetgate.artifacts.fetch import download_blob
    from fleetgate.artifacts.signing import verify_manifest_keys

    root = await _refresh_root(svc, body)
    manifest_raw = body["manifest"].encode("utf-8")
    try:
        manifest, keyids = verify_manifest_keys(manifest_raw, body["signature"], root)
    except IntegrityError as exc:
        raise CommandError(422, "integrity-error", str(exc)) from exc
    assert manifest.size is not None and manifest.sha256 is not None
    await pause_point("stage:after-verify")
    rid = manifest.release_id
    if rid == svc.state.current:
        return Reply(200, {"status": "already-installed", "release": rid})
    # Before the already-staged shortcut: an old release still on disk is a downgrade too.
    until = downgrade.check_stage(svc, manifest, body.get("downgrade_authorization"))
    if until is not None:
        now = time.time()  # forget expired authorisations of releases no longer on disk
        svc.state.downgrades = {
            k: v for k, v in svc.state.downgrades.items() if v > now or svc.store.exists(k)
        }
        svc.state.downgrades[rid] = until
        await svc.save()
    if svc.store.exists(rid):
        first_time = again and rec.params.get("release") == rid
        return Reply(200, {"status": "staged" if first_time else "already-staged", "release": rid})
    _check_fresh(root, manifest)
    rec.params["release"] = rid
    await svc.save()
    arches = {a.value for a in manifest.requires.arch}
    if arches and svc.config.arch not in arches:
        raise CommandError(
            409,
            "incompatible",
            f"{rid} requires arch {sorted(arches)}, device is {svc.config.arch}",
        )
    await asyncio.to_thread(_prune, svc, staging=True)
    _check_disk(svc, manifest)
    blob = svc.store.blob_path(rid)
    keep_part = False
    await asyncio.to_thread(svc.store.discard_staging, rid, keep_part=True)
    try:
        try:
            await download_blob(
                svc.session,
                body["url"],
                blob,
                size=manifest.size,
                sha256=manifest.sha256,
                min_rate=svc.config.min_fetch_kbps * 1024,
                rate_window=svc.config.fetch_rate_window_s,
            )
        except IntegrityError as exc:
            raise CommandError(422, "integrity-error", f"download: {exc}") from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, FleetgateError) as exc:
            retryable = exc.retryable if isinstance(exc, FleetgateError) else True
            keep_part = retryable  # the controller's retry of this stage resumes the download
            msg = f"download: {exc}"
            raise CommandError(502, "download-failed", msg, retryable=retryable) from exc
        await pause_point("stage:after-download")
        try:
            await asyncio.to_thread(
                safe_extract,
                blob,
                svc.store.staging_dir(rid),
                max_members=svc.config.max_members,
                max_bytes=svc.config.max_unpacked_mb * MIB,
            )
        except FleetgateError as exc:
            raise CommandError(422, "integrity-error", f"payload: {exc}") from exc
        await pause_point("stage:after-extract")
        assert manifest.files is not None
        try:  # what was unpacked is what the file list signs (a slot that verifies later)
            await asyncio.to_thread(verify_slot, svc.store.staging_dir(rid), manifest.files)
        except SlotMismatch as exc:
            raise CommandError(422, "integrity-error", f"payload: {exc}") from exc
        await asyncio.to_thread(svc.trust.record, rid, manifest_raw, root.version, keyids)
        await asyncio.to_thread(svc.store.commit_staging, rid, manifest_raw, body["signature"])
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise CommandError(507, "insufficient-disk", f"disk full while staging: {exc}") from exc
        raise
    finally:
        await asyncio.to_thread(svc.store.discard_staging, rid, keep_part=keep_part)
    await pause_point("stage:after-rename")
    log.info("staged %s", rid)
    return Reply(200, {"status": "staged", "release": rid})


async def _refresh_root(svc: AgentService, body: dict[str, Any]) -> Any:
    """Bring the trusted root up to date from the distribution point (each stage), then return
    it. A root that does not chain is refused (422); an unreachable distribution point leaves
    the trusted root as it is."""
    from fleetgate.agent.trust import roots_url

    root = svc.trusted_root()
    base = roots_url(body)
    if base is None:
        return root
    try:
        return await svc.trust.refresh(svc.session, base)
    except IntegrityError as exc:
        log.error("root update refused: %s", exc)
        raise CommandError(422, "integrity-error", f"root update: {exc}") from exc
    except TransportError as exc:
        # Like a 404: stage under the root already trusted. Withholding roots (this, or a
        # hostile 404) is a freeze attack, bounded by the trusted root's expiry (_check_fresh).
        log.warning("root update skipped: %s", exc)
        return svc.trusted_root()


def _check_fresh(root: Any, manifest: Manifest) -> None:
    """Expiry is checked here, at stage, only (never at rollback): the trusted root and the
    manifest must both still be valid, and the manifest must carry the signed file list."""
    from fleetgate.core.manifest import parse_utc

    now = datetime.now(timezone.utc)
    if root.expired(now):
        raise CommandError(
            422,
            "integrity-error",
            f"trusted root v{root.version} expired at {root.expires}: the distribution point "
            "must publish a newer root",
        )
    if manifest.files is None or manifest.valid_until is None:
        raise CommandError(
            422,
            "integrity-error",
            f"{manifest.release_id}: manifest has no signed file list and expiry "
            "(built by an older fleetgate): rebuild the bundle",
        )
    until = parse_utc(manifest.valid_until)
    if until is None or now >= until:
        raise CommandError(
            422,
            "integrity-error",
            f"{manifest.release_id}: manifest expired at {manifest.valid_until}",
        )


def _prune(svc: AgentService, *, staging: bool) -> None:
    """Prune old releases and the stage records that went with them (blocking)."""
    keep = {svc.state.current, svc.state.previous}
    for release_id in svc.store.prune(keep, _extra_kept(svc, staging=staging)):
        svc.trust.forget(release_id)


def _extra_kept(svc: AgentService, *, staging: bool) -> int:
    """How many releases besides current and previous may stay: ``keep_releases`` counts every
    release but the current one (previous included); a stage needs one slot for itself."""
    has_previous = 1 if svc.store.exists(svc.state.previous) else 0
    return max(svc.config.keep_releases - has_previous - (1 if staging else 0), 0)


def _check_disk(svc: AgentService, manifest: Manifest) -> None:
    assert manifest.size is not None
    st = os.statvfs(svc.config.data_dir)
    free = st.f_bavail * st.f_frsize
    unpacked = max(manifest.requires.disk_mb * MIB, manifest.size)
    reserve = svc.config.reserve_mb * MIB
    need = stage_bytes_needed(manifest.size, manifest.requires.disk_mb, svc.config.reserve_mb)
    if free < need:
        raise CommandError(
            507,
            "insufficient-disk",
            f"need {need / MIB:.1f} MiB (artifact {manifest.size / MIB:.1f} + unpacked "
            f"{unpacked / MIB:.1f} + reserve {reserve / MIB:.0f}) while keeping current and "
            f"previous releases; {free / MIB:.1f} MiB free",
        )


# -- activate -------------------------------------------------------------------------------------
async def activate(
    svc: AgentService, body: dict[str, Any], rec: CommandRecord, again: bool
) -> Reply:
    rid: str = body["release"]
    if not svc.store.exists(rid):
        raise CommandError(404, "unknown-release", f"{rid} is not staged on this device")
    st = svc.state
    reverted = st.reverted
    if again and reverted is not None and reverted.get("from") == rid and st.current != rid:
        # This activate was cut short (the release killed the agent) and the device has since
        # reverted it by itself: repeating it must not put the bad release back on.
        return Reply(
            200,
            {
                "status": "start-failed",
                "release": rid,
                "previous": st.previous,
                "error": f"reverted by the device: {reverted.get('message')}",
                "logs": list(reverted.get("logs", []))[-LOG_TAIL:],
                "reverted": True,
            },
        )
    svc.activity = "activating"
    old = st.current
    manifest, _warning = await _load_verified(svc, rid, rollback=False)
    svc.integrity_error = None
    started = True
    if rid == old:
        # Already switched (maybe by the run a crash cut short): make sure it runs.
        if not await svc.supervisor.is_running() or manifest.kind is ArtifactKind.CONFIG:
            await trial.count_start(svc)
            await start_release(svc, rid, manifest)
        else:
            started = False
    else:
        if rid != st.previous:  # the rollback copy is never blocked
            downgrade.check_activate(svc, manifest)
        rec.params.update({"from": old, "to": rid})
        await svc.save()
        if isinstance(svc.supervisor, ProcessSupervisor):
            await svc.supervisor.stop()
        await pause_point("activate:after-stop")
        await _switch(svc, rid, "activate")
        st.previous = old if old is not None else st.previous
        st.current = rid
        # On trial until committed; its first start is counted here, before it happens.
        st.trial = trial.new_trial(rid, st.previous, time.time(), svc.config.trial_s)
        st.reverted = None  # the device runs something else now: that report is history
        await svc.save()
        trial.clear_log(svc)
        trial.log_line(svc, f"--- fleetgate: activated {rid} on trial, start 1")
        await pause_point("activate:after-state")
        await start_release(svc, rid, manifest)
        await pause_point("activate:after-start")
    error = await wait_healthy(svc, manifest, started)
    base = {"release": rid, "previous": st.previous}
    if error is not None:
        log.warning("activate %s: start failed: %s", rid, error)
        return Reply(200, {"status": "start-failed", **base, "error": error, "logs": _tail(svc)})
    await asyncio.to_thread(_prune, svc, staging=False)
    reply: dict[str, Any] = {"status": "active", **base}
    if body.get("with_health") is True:
        # Issue 12: the started release's health now: the controller's smoke test judges it
        # without a call of its own.
        reply["health"] = await svc.health()
    return Reply(200, reply)


# -- rollback -------------------------------------------------------------------------------------
async def rollback(
    svc: AgentService, body: dict[str, Any], rec: CommandRecord, again: bool
) -> Reply:
    current = svc.state.current
    # After a self-revert the device already runs the known-good release: a rollback (to it, or
    # to "previous", which the revert used up) is answered from the revert, never refused.
    sr = svc.state.reverted
    self_reverted = sr if sr is not None and sr.get("to") == current else None
    if again and rec.params.get("to") is not None and rec.params["to"] == current:
        target, left = current, rec.params.get("from")  # the switch happened before a crash
    else:
        explicit = body.get("to")
        target = explicit or svc.state.previous
        if explicit is None and target is None and self_reverted is not None:
            target = current
        if explicit is not None and not svc.store.exists(explicit):
            raise CommandError(404, "unknown-release", f"{explicit} is not on this device")
        if target is None or not svc.store.exists(target):
            raise CommandError(409, "no-rollback-copy", "no previous release on this device")
        left = current if target != current else None
    svc.activity = "rolling-back"
    assert target is not None
    manifest, warning = await _load_verified(svc, target, rollback=True)
    svc.integrity_error = None
    started = True
    if target != current:
        rec.params.update({"from": left, "to": target})
        await svc.save()
        if isinstance(svc.supervisor, ProcessSupervisor):
            await svc.supervisor.stop()  # kill the group; nothing of the left release runs
        await pause_point("rollback:after-stop")
        await _switch(svc, target, "rollback")
        svc.state.current, svc.state.previous = target, None
        svc.state.trial, svc.state.reverted = None, None
        await svc.save()
        await pause_point("rollback:after-state")
        await start_release(svc, target, manifest)
    else:
        svc.state.previous = None
        await svc.save()
        if not await svc.supervisor.is_running() or manifest.kind is ArtifactKind.CONFIG:
            await start_release(svc, target, manifest)
        else:
            started = False
    error = await wait_healthy(svc, manifest, started)
    reply: dict[str, Any] = {
        "status": "rolled-back",
        "release": target,
        "from": left,
        "app_healthy": error is None,
    }
    if target == current and self_reverted is not None:
        reply["from"] = self_reverted.get("from")
        reply["self_reverted"] = {
            "reason": self_reverted.get("reason"),
            "message": self_reverted.get("message"),
            "at": self_reverted.get("at"),
        }
    if warning is not None:
        reply["warning"] = warning
    if error is not None:
        log.error("rollback to %s: restored release is not healthy: %s", target, error)
        reply.update({"error": error, "logs": _tail(svc)})
    if body.get("with_health") is True:
        # Issue 12: the restored release's health now, so the controller's first recovery
        # check needs no call of its own.
        reply["health"] = await svc.health()
    return Reply(200, reply)


# -- commit ---------------------------------------------------------------------------------------
async def commit(svc: AgentService, body: dict[str, Any], rec: CommandRecord, again: bool) -> Reply:
    """End the current release's trial: it stays, whatever restarts follow, and its version
    becomes the downgrade floor of its name (if higher). Committing the committed is a no-op."""
    rid: str = body["release"]
    st = svc.state
    if rid != st.current:
        sr = st.reverted
        why = (
            f"the device reverted {rid} by itself ({sr.get('message')}); it runs {st.current}"
            if sr is not None and sr.get("from") == rid
            else f"{rid} is not the current release ({st.current})"
        )
        raise CommandError(409, "not-current", why)
    manifest, _raw, _sig = await asyncio.to_thread(svc.store.load_manifest, rid)
    t = st.trial
    fresh = t is not None and t.get("release") == rid
    st.trial = None
    floor = downgrade.raise_floor(st.committed, manifest.name, manifest.version)
    st.downgrades.pop(rid, None)
    await svc.save()
    trial.clear_log(svc)
    log.info("committed %s (floor of %s: %s)", rid, manifest.name, floor)
    if fresh:
        await trial.run_hook(
            svc,
            "on_commit",
            {"FLEETGATE_HOOK": "commit", "FLEETGATE_RELEASE": rid},
        )
    return Reply(
        200,
        {
            "status": "committed" if fresh else "already-committed",
            "release": rid,
            "floor": {manifest.name: floor},
        },
    )
