"""ROLLOUT waves and rollbacks sections of the session report, from a ``SessionLog``.

Raw values only (counts, ids, fractions, seconds); ``report.session_md`` formats them. The
readings of ``docs/events.md`` (health check words, failed = deploy failures + health failures,
rollback windows) are listed in ``report.session``'s docstring. CONFIRM is
``report.session_confirm``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from fleetgate.core.state import DeviceStatus, Phase
from fleetgate.report.session_log import LogEvent, SessionLog, human, ids, num, stage_of

D = DeviceStatus

_HEALTH_CHECK = {
    "CONTINUE": "PASS",
    "QUARANTINE_AND_CONTINUE": "FAIL",
    "PAUSE_FOR_HUMAN": "PAUSED",
    "ROLLBACK_WAVE_AND_HALT": "ROLLED BACK",
}


def _percent(n: int, total: int) -> float:
    return round(100 * n / total, 1) if total else 0.0


def _stage_device_events(log: SessionLog, stage: int, devices: set[str]) -> list[LogEvent]:
    return [
        e
        for e in log.events
        if e.device_id in devices and e.action.startswith("device.") and stage_of(e) == stage
    ]


def rollout_section(
    log: SessionLog, plan: Mapping[str, Any], info: Mapping[str, Mapping[str, str]]
) -> list[dict[str, Any]]:
    state = log.state
    stages = state.stages
    targeted = max(1, sum(len(s) for s in stages))
    plan_waves = {
        int(w["number"]): w
        for w in plan.get("waves") or ()
        if isinstance(w, Mapping) and num(w.get("number")) is not None
    }
    out: list[dict[str, Any]] = []
    cum = len(state.canaries)
    for n in range(1, len(stages)):
        devs = list(stages[n])
        cum += len(devs)
        pw = plan_waves.get(n, {})
        percent = num(pw.get("cumulative_percent"))
        if percent is None:
            percent = round(100 * cum / targeted, 2)
        started = log.last_of_stage(n, "stage.started")
        preflight = log.last_of_stage(n, "stage.preflight")
        deployed_ev = log.last_of_stage(n, "stage.deployed")
        ev = log.last_of_stage(n, "wave.evaluated")
        dev_events = _stage_device_events(log, n, set(devs))
        reached = bool(started or preflight or deployed_ev or ev or dev_events)
        if deployed_ev is not None and num(deployed_ev.details.get("deployed")) is not None:
            deployed = int(num(deployed_ev.details["deployed"]) or 0)
        else:
            deployed = len({e.device_id for e in dev_events if e.action == "device.activated"})
        # Invariant 10: a device whose transfer or stage failed is a failure of its wave, even
        # in logs whose stage.deployed lists only the devices that failed to start.
        not_deployed = [
            str(e.device_id)
            for e in dev_events
            if e.action == "device.deploy_failed" and e.details.get("step") != "confirm"
        ]
        failed = list(
            dict.fromkeys(
                (ids(deployed_ev.details, "failed") if deployed_ev else [])
                + not_deployed
                + (ids(ev.details, "failed") if ev else [])
            )
        )
        recorded = ev.details.get("reasons") if ev else None
        recorded = recorded if isinstance(recorded, Mapping) else {}
        reasons = {i: str(recorded.get(i) or state.reasons.get(i, "")) for i in failed}
        # The wave's devices (wave.evaluated.targeted), and the rate's denominator: those the
        # wave tried to deploy (wave.evaluated.attempted; ADR 0020 — a log from before it
        # recorded its rate over targeted, and that recorded rate is what is shown).
        wave_targeted = int(num(ev.details.get("targeted")) or 0) if ev else 0
        wave_targeted = wave_targeted or len(devs)
        recorded_attempted = num(ev.details.get("attempted")) if ev else None
        attempted = (
            int(recorded_attempted)
            if recorded_attempted is not None
            else sum(1 for i in devs if not state.devices[i].set_aside_before_install)
        )
        in_wave = [i for i in failed if i in set(devs)]
        rate = num(ev.details.get("rate")) if ev else None
        if rate is None and (ev is not None or deployed_ev is not None):
            rate = len(in_wave) / attempted if attempted else 0.0
        skipped = ids(deployed_ev.details, "skipped") if deployed_ev else []
        if not skipped and reached:
            # No stage.deployed (a pre-flight halt): the wave's devices left unreachable.
            skipped = [i for i in devs if state.devices[i] in (D.SKIPPED, D.UNREACHABLE)]
        soak_done = log.last_of_stage(n, "soak.completed")
        soak_start = log.last_of_stage(n, "soak.started")
        if soak_done is not None:
            soak_s, soak_state = num(soak_done.details.get("seconds")), "served"
        elif soak_start is not None:
            soak_s, soak_state = num(soak_start.details.get("seconds")), "in progress"
        else:
            soak_s, soak_state = None, "not started"
        decision, reason, health = "", "", "NOT REACHED"
        if ev is not None:
            decision = str(ev.details.get("action", ""))
            reason = str(ev.details.get("reason", ""))
            health = _HEALTH_CHECK.get(decision, "FAIL")
        elif reached:
            live = state.stage == n and state.phase is Phase.ROLLOUT
            health = "PENDING" if live else "NOT RUN"
            if preflight is not None and preflight.details.get("decision") == "HALT":
                decision, reason = "HALT", str(preflight.details.get("reason", ""))
            elif not live and state.stage == n:
                decision, reason = state.phase.value, state.halt_reason
        after = ev or preflight
        nxt = log.last_of_stage(n + 1, "stage.started")
        resumed = [
            e
            for e in log.all("deployment.resumed")
            if after is not None and e.index > after.index and (nxt is None or e.index < nxt.index)
        ]
        out.append(
            {
                "number": n,
                "percent": percent,
                "share_percent": _percent(len(devs), state.fleet_total),
                "reached": reached,
                "devices": devs,
                "by_hardware": dict(
                    sorted(Counter(info.get(i, {}).get("hardware", "?") for i in devs).items())
                ),
                "targeted": wave_targeted,
                "attempted": attempted,
                "deployed": deployed,
                "failed": len(failed),
                "failed_ids": failed,
                "failed_reasons": reasons,
                "skipped": len(skipped),
                "skipped_ids": skipped,
                "unreachable_ids": ids(preflight.details, "unreachable") if preflight else [],
                "health_check": health,
                "checked": int(num(ev.details.get("checked")) or 0) if ev else None,
                "failure_rate": rate,
                "scope": str(ev.details.get("scope", "")) if ev else "",
                "soak_s": soak_s,
                "soak_state": soak_state,
                "decision": decision,
                "reason": reason,
                "resumed": (
                    {
                        "by": resumed[0].actor,
                        "ts": resumed[0].ts,
                        "comment": str(resumed[0].details.get("comment") or ""),
                    }
                    if resumed
                    else None
                ),
            }
        )
    return out


def rollback_windows(log: SessionLog) -> list[tuple[int, int]]:
    """``(first, last)`` event index of each rollback, from its request or start to its
    completion (an unfinished one runs to the end of the log)."""
    windows: list[tuple[int, int]] = []
    start: int | None = None
    for e in log.events:
        if e.action in ("rollback.requested", "rollback.started") and start is None:
            start = e.index
        elif e.action == "rollback.completed":
            windows.append((e.index if start is None else start, e.index))
            start = None
    if start is not None:
        windows.append((start, len(log.events)))
    return windows


def _scope_label(log: SessionLog, devices: list[str], quarantine: bool, by: str | None) -> str:
    if quarantine:  # a partial canary FAIL quarantines the failed canaries
        canaries = set(log.state.canaries)
        return "canary quarantine" if devices and set(devices) <= canaries else "quarantine"
    if by is not None and human(by):
        return "operator"
    for n, st in enumerate(log.state.stages):
        if devices and set(devices) <= set(st):
            return "canary" if n == 0 else f"wave {n}"
    return "all deployed"


def rollback_sections(log: SessionLog) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for number, (a, b) in enumerate(rollback_windows(log), start=1):
        evs = log.events[a : b + 1]
        first = evs[0]
        req = next((e for e in evs if e.action == "rollback.requested"), None)
        started = next((e for e in evs if e.action == "rollback.started"), None)
        done = next((e for e in evs if e.action == "rollback.completed"), None)
        by = req.actor if req else None
        devices = (ids(started.details, "devices") if started else []) or (
            ids(req.details, "devices") if req else []
        )
        rolled = [str(e.device_id) for e in evs if e.action == "device.rolled_back"]
        failed = [e for e in evs if e.action == "device.rollback_failed"]
        rolled_back = ids(done.details, "rolled_back") if done else rolled
        failed_ids = ids(done.details, "failed") if done else [str(e.device_id) for e in failed]
        if not devices:
            devices = list(dict.fromkeys(rolled_back + failed_ids))
        cap = next((e for e in evs if e.action == "rollback.capability_checked"), None)
        if cap is None and failed:
            cap = next((e for e in log.all("rollback.capability_checked") if e.index > b), None)
        reason_src = started or req or first
        out.append(
            {
                "number": number,
                "phase": (first.halted_from or first.phase_before).value,
                "scope": _scope_label(log, devices, first.quarantine, by),
                "reason": str(reason_src.details.get("reason", "")),
                "requested_by": by,
                "devices": devices,
                "rolled_back": rolled_back,
                "failed": failed_ids,
                "recovered": ids(done.details, "recovered") if done else [],
                "seconds": num(done.details.get("seconds")) if done else None,
                "completed": done is not None,
                "ts_started": first.ts,
                "ts_completed": done.ts if done else None,
                "logs_captured": [
                    str(e.device_id) for e in evs if e.action == "device.logs_captured"
                ],
                "failures": [
                    {
                        "device_id": str(e.device_id),
                        "error": str(e.details.get("error", "")),
                        "state": e.details.get("state"),
                    }
                    for e in failed
                ],
                "capability": (
                    {"ok": ids(cap.details, "ok"), "missing": ids(cap.details, "missing")}
                    if cap
                    else None
                ),
            }
        )
    return out
