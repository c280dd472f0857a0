"""PREPARE, CANARY and approval sections of the session report, from a ``SessionLog``
(VERIFY, with its canary rounds, is ``report.session_verify``).

Each function returns a JSON-safe dict of raw values (counts, ids, fractions, seconds); the
markdown renderer formats them. How each field is read from ``docs/events.md`` is written in
``report.session``'s docstring; the code below follows it line by line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from fleetgate.core.state import Phase
from fleetgate.report.session_log import (
    LogEvent,
    SessionLog,
    display_status,
    ids,
    num,
)
from fleetgate.report.session_rollout import rollback_windows


def _artifact_name_version(label: str) -> tuple[str, str]:
    name, sep, version = label.rpartition(" v")
    return (name, version) if sep and name else (label or "?", "?")


def _fallback_plan(created: LogEvent, log: SessionLog) -> dict[str, Any]:
    """A plan dict with every key ``render_prepare_md`` reads, from the stages and targets, for
    logs whose ``deployment.created`` carries no (or a partial) ``plan``."""
    d, state = created.details, log.state
    name, version = _artifact_name_version(state.artifact)
    targets = {str(t["id"]): t for t in d.get("targets") or () if isinstance(t, Mapping)}
    planned = [i for st in state.stages for i in st]

    def attr(dev: str, key: str) -> str:
        return str(targets.get(dev, {}).get(key, "?"))

    cells = Counter((attr(i, "group"), attr(i, "hardware"), attr(i, "arch")) for i in planned)
    total, cum = max(1, len(planned)), len(state.canaries)
    waves = []
    for n, st in enumerate(state.stages[1:], start=1):
        cum += len(st)
        waves.append(
            {
                "number": n,
                "devices": list(st),
                "count": len(st),
                "cumulative_percent": round(100 * cum / total, 2),
                "by_hardware": dict(sorted(Counter(attr(i, "hardware") for i in st).items())),
                "by_group": dict(sorted(Counter(attr(i, "group") for i in st).items())),
            }
        )
    return {
        "artifact": {
            "name": name,
            "version": version,
            "kind": "?",
            "sha256": state.sha256,
            "bundle_sha256": None,
            "size": None,
            "disk_mb": 0,
        },
        "distribution": None,
        "fleet_total": state.fleet_total,
        "targeted": len(planned),
        "groups": sorted({g for g, _, _ in cells}),
        "device_groups": [
            {"group": g, "hardware": h, "arch": a, "count": n}
            for (g, h, a), n in sorted(cells.items())
        ],
        "canaries": [
            {"id": i, "hardware": attr(i, "hardware"), "group": attr(i, "group"), "reason": "-"}
            for i in state.canaries
        ],
        "waves": waves,
        "compatibility": [],
        "excluded": [],
        "not_targeted": max(0, state.fleet_total - len(planned)),
        "uncovered": [],
        "notes": [],
        "blockers": [],
    }


def prepare_section(log: SessionLog, created: LogEvent) -> dict[str, Any]:
    recorded = created.details.get("plan")
    recorded = dict(recorded) if isinstance(recorded, Mapping) else {}
    fallback = _fallback_plan(created, log)
    plan = {**fallback, **recorded}
    plan["artifact"] = {**fallback["artifact"], **dict(recorded.get("artifact") or {})}
    if not plan["artifact"].get("sha256"):
        plan["artifact"]["sha256"] = log.state.sha256
    if not plan["artifact"].get("bundle_sha256"):
        plan["artifact"]["bundle_sha256"] = created.details.get("bundle_sha256")
    if not recorded:
        plan["notes"] = ["the plan was not recorded; rebuilt from the deployment's stages"]
    passed, failed = log.last("prepare.passed"), log.last("prepare.failed")
    result = passed or failed
    dist_ev = log.last("distribution.started")
    distribution = (
        (result.details.get("distribution") if result else None)
        or (dist_ev.details.get("url") if dist_ev else None)
        or plan.get("distribution")
    )
    plan["distribution"] = distribution
    plan["started"] = passed is not None
    short = log.last("policy.short_soak_allowed")
    return {
        "status": "PASSED" if passed else "FAILED" if failed else "PENDING",
        "ts": result.ts if result else None,
        "reason": str(failed.details.get("reason", "")) if failed else "",
        "checks": [
            {
                "check": str(c.get("check", "?")),
                "ok": bool(c.get("ok")),
                "detail": str(c.get("detail", "")),
            }
            for c in (result.details.get("checks") or [] if result else [])
            if isinstance(c, Mapping)
        ],
        "distribution": distribution,
        "short_soak": dict(short.details) if short else None,
        "plan": plan,
    }


def _latest(ok: list[LogEvent], fail: list[LogEvent], ok_word: str) -> str:
    last_ok = ok[-1].index if ok else -1
    last_fail = fail[-1].index if fail else -1
    if last_ok < 0 and last_fail < 0:
        return "-"
    return ok_word if last_ok > last_fail else "FAIL"


def _deploy_failed(log: SessionLog, stage: int, dev: str, step: str) -> list[LogEvent]:
    return [
        e
        for e in log.of_stage(stage, "device.deploy_failed", device=dev)
        if e.details.get("step") == step
    ]


def _joined(log: SessionLog) -> dict[str, tuple[int, str]]:
    """Replacement canary -> (the canary round it joined, why it was chosen)."""
    out: dict[str, tuple[int, str]] = {}
    for n, e in enumerate(log.all("canary.replaced"), start=2):
        why = e.details.get("why")
        for i in ids(e.details, "replacements"):
            out[i] = (n, str(why.get(i, "")) if isinstance(why, Mapping) else "")
    return out


def canary_section(log: SessionLog, info: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    state = log.state
    joined = _joined(log)
    rows = []
    for dev in state.canaries:
        smoke = log.of_stage(0, "device.health", device=dev)
        smoke = [e for e in smoke if e.details.get("round") == "smoke"]
        rows.append(
            {
                "device_id": dev,
                "type": info.get(dev, {}).get("hardware", "?"),
                "group": info.get(dev, {}).get("group", "?"),
                "transfer": _latest(
                    log.of_stage(0, "device.staged", device=dev),
                    _deploy_failed(log, 0, dev, "stage"),
                    "OK",
                ),
                "deploy": _latest(
                    log.of_stage(0, "device.activated", device=dev),
                    _deploy_failed(log, 0, dev, "activate"),
                    "OK",
                ),
                "smoke": _latest(
                    [e for e in smoke if e.details.get("status") != "failed"],
                    [e for e in smoke if e.details.get("status") == "failed"]
                    + _deploy_failed(log, 0, dev, "smoke"),
                    "PASS",
                ),
                "status": display_status(state.devices[dev]),
                "round": joined.get(dev, (1, ""))[0],
                "why": joined.get(dev, (1, ""))[1],
            }
        )
    windows = rollback_windows(log)
    drills = []
    for e in log.all("device.rolled_back"):
        if e.device_id in state.canaries and not any(a <= e.index <= b for a, b in windows):
            again = [
                a for a in log.all("device.activated", device=e.device_id) if a.index > e.index
            ]
            drills.append(
                {
                    "device_id": e.device_id,
                    "ts": e.ts,
                    "to": e.details.get("release"),
                    "from": e.details.get("from"),
                    "forward_again": bool(again),
                }
            )
    # Every canary round runs a stage 0 of its own: who was unreachable in any of them.
    unreachable = [
        i for e in log.of_stage(0, "stage.preflight") for i in ids(e.details, "unreachable")
    ]
    deployed = log.last_of_stage(0, "stage.deployed")
    return {
        "reached": log.reached(Phase.CANARY),
        "devices": len(state.canaries),
        "rows": rows,
        "unreachable": list(dict.fromkeys(unreachable)),
        "deployed": int(num(deployed.details.get("deployed")) or 0) if deployed else None,
        "failed": ids(deployed.details, "failed") if deployed else [],
        "skipped": ids(deployed.details, "skipped") if deployed else [],
        "rollback_drill": drills,
    }


def approval_section(log: SessionLog) -> dict[str, Any]:
    req = log.last("approval.requested")
    decided = log.last("approval.granted", "approval.rejected")
    if decided is not None:
        status = "GRANTED" if decided.action == "approval.granted" else "REJECTED"
    elif req is not None or log.state.phase is Phase.AWAITING_APPROVAL:
        status = "PENDING"
    else:
        status = "NOT REQUESTED"
    return {
        "status": status,
        "requested": req is not None or log.reached(Phase.AWAITING_APPROVAL),
        "requested_ts": req.ts if req else None,
        "by": decided.actor if decided else None,
        "ts": decided.ts if decided else None,
        "comment": str(decided.details.get("comment") or "") if decided else "",
        # The verdict the approval was asked on (INCONCLUSIVE: a person takes the risk by
        # name, ``accept_inconclusive``).
        "verdict": str(req.details.get("verdict") or "PASS") if req else None,
        "accept_inconclusive": bool(decided.details.get("accept_inconclusive"))
        if decided
        else False,
    }
