"""Commit or revert, decided on the device: the trial of an activated release (issue 10).

An activated release is *on trial* until the controller commits it (``POST /v1/commit``) or
its device-local deadline passes. While on trial the device reverts to the release it came
from, by itself, when the release

- has been started ``trial_max_starts`` times without a commit: a persistent counter in
  ``state.json`` is incremented and fsynced *before* each start (activate, agent start-up), so
  a release that kills the agent (or, on a real board, reboots the device) right after it
  starts is counted even though nothing runs after the kill;
- crash-loops (the supervisor's ≥ 3 restarts within 60 s);
- is not healthy when the deadline (``trial_s`` after activation) passes.

A release healthy at its deadline **stays** (still uncommitted, and reported so in the facts):
see docs/adr/0006-commit-or-revert.md for why this differs from Mender.

Contract:
- ``new_trial`` / ``startup_problem`` / ``reconcile`` / ``facts_view`` are pure (state in,
  state or answer out); ``count_start``, ``watch`` and ``revert`` act.
- ``revert`` runs with the command lock held (or before the agent serves), so it never
  interleaves with a command. It records its intent (``trial.reverting``) before switching, so
  an agent killed mid-revert finishes it at start-up; it never runs anything of the release it
  leaves (its process group is killed), and the left release stays on disk.
- The revert is reported (reason, from, to, logs) in ``state.reverted`` until a later command
  switches the device; a ``rollback`` meanwhile is answered from it (commands.rollback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

from fleetgate.agent.hooks import pause_point
from fleetgate.agent.supervisor import ProcessSupervisor

if TYPE_CHECKING:
    from fleetgate.agent.service import AgentService
    from fleetgate.agent.state import AgentState

log = logging.getLogger("fleetgate.agent")

ON_TRIAL = "on-trial"
KEPT = "kept-uncommitted"  # healthy at the deadline, never committed
HOOK_TIMEOUT_S = 30.0
REVERT_LOG_LINES = 50
# A release on trial has its output kept on disk (bounded): a release that kills the agent takes
# the in-memory log with it, and the revert at the next start-up must still report something.
LOG_FILE = "trial.log"
LOG_MAX_BYTES = 64 * 1024


def new_trial(release: str, previous: str | None, now: float, trial_s: float) -> dict[str, Any]:
    """A trial that starts now, its first start already counted (it follows immediately)."""
    return {
        "release": release,
        "from": previous,
        "started": now,
        "deadline": now + trial_s,
        "starts": 1,
        "state": ON_TRIAL,
    }


def on_trial(state: AgentState) -> dict[str, Any] | None:
    """The current release's trial, if it is on one (not kept, not stuck)."""
    t = state.trial
    if t is None or t.get("release") != state.current or t.get("state") != ON_TRIAL:
        return None
    return t


def startup_problem(state: AgentState, max_starts: int) -> tuple[str, str] | None:
    """Why the current release must be reverted before it is started again, or None."""
    t = on_trial(state)
    if t is None:
        return None
    if t.get("reverting"):
        r = t["reverting"]
        return str(r.get("reason", "interrupted")), str(r.get("message", "interrupted revert"))
    starts = int(t.get("starts", 0))
    if starts >= max_starts:
        return (
            "start-limit",
            f"started {starts} times without a commit (trial_max_starts = {max_starts}): "
            "it kills the agent or the device",
        )
    return None


def reconcile(state: AgentState, link: str | None, interrupted: Any) -> None:
    """After a crash: make the trial agree with the ``current`` link (the link wins).

    - a revert that died after its switch (link = the trial's ``from``) is finished: reported;
    - an activate that died after its switch (the record names the link as its ``to``) leaves
      the new release current without the trial the activate would have written: start one;
    - a trial of a release that is no longer current (an interrupted rollback) is dropped.
    """
    t = state.trial
    if t is not None and t.get("release") != link:
        reverting = t.get("reverting")
        if reverting and link is not None and link == t.get("from"):
            state.reverted = _report(t, link, reverting)
            state.previous = None
        state.trial = None
    rec = interrupted
    if (
        rec is not None
        and rec.command == "activate"
        and link is not None
        and rec.params.get("to") == link
        and rec.params.get("from") != link
        and state.trial is None
    ):
        # The kill came after the switch and before the trial was written: the release is
        # activated, so it is on trial; its first start is counted by the start-up check.
        state.trial = new_trial(link, rec.params.get("from"), time.time(), 0.0)
        state.trial["starts"] = 0
        state.trial["deadline"] = None  # set by count_start from the agent's trial_s


def facts_view(state: AgentState, max_starts: int, now: float) -> dict[str, Any] | None:
    t = state.trial
    if t is None or t.get("release") != state.current:
        return None
    deadline = t.get("deadline")
    view: dict[str, Any] = {
        "release": t.get("release"),
        "state": t.get("state", ON_TRIAL),
        "starts": int(t.get("starts", 0)),
        "max_starts": max_starts,
        "deadline_in_s": None if deadline is None else round(max(0.0, deadline - now), 1),
    }
    if t.get("stuck"):
        view["stuck"] = t["stuck"]
    return view


def _report(t: dict[str, Any], to: str, reverting: dict[str, Any]) -> dict[str, Any]:
    return {
        "reason": reverting.get("reason"),
        "message": reverting.get("message"),
        "from": t.get("release"),
        "to": to,
        "at": reverting.get("at"),
        "starts": int(t.get("starts", 0)),
        "logs": list(reverting.get("logs", [])),
    }


# -- the trial's log ------------------------------------------------------------------------------
def log_line(svc: AgentService, line: str) -> None:
    """Append one line of output to ``trial.log`` while the current release is on trial
    (no fsync: it is evidence, not state). Past ``LOG_MAX_BYTES`` it rotates once to
    ``trial.log.1``. Never raises: a full disk must not take the app's output down with it."""
    if on_trial(svc.state) is None:
        return
    path = svc.config.data_dir / LOG_FILE
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            size = fh.tell()
        if size > LOG_MAX_BYTES:
            path.replace(path.with_name(LOG_FILE + ".1"))
    except OSError:
        pass


def log_tail(svc: AgentService, lines: int) -> list[str]:
    out: list[str] = []
    for name in (LOG_FILE + ".1", LOG_FILE):
        with contextlib.suppress(OSError):
            out.extend((svc.config.data_dir / name).read_text("utf-8", "replace").splitlines())
    return out[-lines:]


def clear_log(svc: AgentService) -> None:
    for name in (LOG_FILE + ".1", LOG_FILE):
        (svc.config.data_dir / name).unlink(missing_ok=True)


# -- acting ---------------------------------------------------------------------------------------
async def count_start(svc: AgentService) -> None:
    """Before (re)starting a release on trial: one more start, on disk before the start."""
    t = on_trial(svc.state)
    if t is None:
        return
    now = time.time()
    t["starts"] = int(t.get("starts", 0)) + 1
    deadline = t.get("deadline")
    if deadline is None or deadline - now > svc.config.trial_s:
        # Unset (an activate died after its switch) or the clock went back: the trial never
        # lasts longer than trial_s from now; the start counter bounds it anyway.
        t["deadline"] = now + svc.config.trial_s
    await svc.save()
    log_line(svc, f"--- fleetgate: start {t['starts']} of {t['release']} on trial ({_iso(now)})")


async def watch(svc: AgentService) -> None:
    """One look at the release on trial (from the probe loop): crash loop → revert; deadline
    passed → kept if healthy, else revert. Skipped while a command runs (it holds the lock)."""
    t = on_trial(svc.state)
    if t is None or t.get("stuck") or svc.lock.locked():
        return
    if svc.supervisor.crash_loop:
        async with svc.lock:
            if on_trial(svc.state) is t:
                await revert(svc, "crash-loop", "crash loop (≥ 3 restarts within 60 s) on trial")
        return
    deadline = t.get("deadline")
    if deadline is None or time.time() < deadline:
        return
    from fleetgate.agent.commands import app_healthy_now

    healthy = await app_healthy_now(svc)
    if not healthy and time.monotonic() - svc.app_started_at < svc.config.health_timeout_s:
        return  # just (re)started (after an agent restart past the deadline): give it time
    if svc.lock.locked():
        return  # a command began meanwhile: never make the probe loop wait for a stage
    async with svc.lock:
        if on_trial(svc.state) is not t:
            return
        if healthy:
            t["state"] = KEPT
            await svc.save()
            clear_log(svc)
            log.warning(
                "trial of %s ended without a commit; healthy at the deadline: kept (uncommitted)",
                t["release"],
            )
        else:
            trial_s = svc.config.trial_s
            await revert(svc, "health-deadline", f"not healthy {trial_s:g}s after activation")


async def revert(svc: AgentService, reason: str, message: str) -> bool:
    """Switch back to the release the trial came from; True once the device is back there.
    The caller holds the command lock (or the agent does not serve yet)."""
    from fleetgate.agent import commands
    from fleetgate.agent.reply import CommandError

    state = svc.state
    t = state.trial
    assert t is not None and t.get("release") == state.current
    bad = state.current
    target = t.get("from") or state.previous
    log.error("reverting %s by itself: %s", bad, message)
    if target is None or not svc.store.exists(target):
        t["stuck"] = f"cannot revert ({message}): no previous release on disk"
        log.error("%s", t["stuck"])
        await svc.save()
        return False
    if not t.get("reverting"):
        t["reverting"] = {
            "reason": reason,
            "message": message,
            "at": _iso(time.time()),
            "logs": log_tail(svc, REVERT_LOG_LINES) or commands.log_tail(svc, REVERT_LOG_LINES),
        }
        await svc.save()  # the intent, before anything changes: a crash finishes the revert
    svc.activity = "reverting"
    try:
        # A revert is a rollback: the root the slot was accepted under is enough.
        manifest, _warning = await commands._load_verified(svc, target, rollback=True)
    except CommandError as exc:
        t["stuck"] = f"cannot revert to {target}: {exc.message}"
        log.error("%s", t["stuck"])
        t.pop("reverting", None)
        await svc.save()
        svc.activity = "idle"
        return False
    if isinstance(svc.supervisor, ProcessSupervisor):
        await svc.supervisor.stop()  # the whole group; nothing of the left release runs
    await asyncio.to_thread(svc.store.switch_current, target)
    await pause_point("revert:after-link")
    state.reverted = _report(t, target, t["reverting"])
    state.current, state.previous, state.trial = target, None, None
    svc.integrity_error = None  # whatever kept the left release from starting is behind us
    await svc.save()
    clear_log(svc)
    await commands.start_release(svc, target, manifest)
    svc.activity = "idle"
    await run_hook(
        svc,
        "on_revert",
        {
            "FLEETGATE_HOOK": "revert",
            "FLEETGATE_RELEASE": target,
            "FLEETGATE_REVERT_FROM": str(bad),
            "FLEETGATE_REVERT_TO": target,
            "FLEETGATE_REVERT_REASON": reason,
        },
    )
    return True


async def run_hook(svc: AgentService, name: str, env: dict[str, str]) -> None:
    """Run the ``on_commit``/``on_revert`` script with the release ids in its environment.
    Its failure is logged, never fatal: the device's decision is already on disk."""
    path = svc.config.on_commit if name == "on_commit" else svc.config.on_revert
    if path is None:
        return
    from fleetgate.agent.service import child_env

    full = {**child_env(svc.config), "FLEETGATE_DATA_DIR": str(svc.config.data_dir), **env}
    try:
        proc = await asyncio.create_subprocess_exec(
            str(path),
            env=full,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        log.error("%s hook %s could not start: %s", name, path, exc.strerror or exc)
        return
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), HOOK_TIMEOUT_S)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        log.error("%s hook %s timed out after %gs", name, path, HOOK_TIMEOUT_S)
        return
    text = out.decode("utf-8", "replace").strip()
    if proc.returncode != 0:
        log.error("%s hook %s failed (exit %s): %s", name, path, proc.returncode, text[-500:])
    else:
        log.info("%s hook %s ok%s", name, path, f": {text[-200:]}" if text else "")


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
