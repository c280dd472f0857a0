"""PREPARE, CANARY, VERIFY and approval sections of the session report, from a ``SessionLog``.

Each function returns a JSON-safe dict of raw values (counts, ids, fractions, seconds); the
markdown renderer formats them. How each field is read from ``docs/events.md`` is written in
``report.session``'s docstring; the code below follows it line by line.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

from fleetgate.core.state import Phase
from fleetgate.report.health_box import health_box_data
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


def canary_section(log: SessionLog, info: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    state = log.state
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
    preflight = log.last_of_stage(0, "stage.preflight")
    deployed = log.last_of_stage(0, "stage.deployed")
    return {
        "reached": log.reached(Phase.CANARY),
        "devices": len(state.canaries),
        "rows": rows,
        "unreachable": ids(preflight.details, "unreachable") if preflight else [],
        "deployed": int(num(deployed.details.get("deployed")) or 0) if deployed else None,
        "failed": ids(deployed.details, "failed") if deployed else [],
        "skipped": ids(deployed.details, "skipped") if deployed else [],
        "rollback_drill": drills,
    }


def _mentions(text: str, dev: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(dev)}(?![\w.-])", text) is not None


def verify_section(
    log: SessionLog,
    info: Mapping[str, Mapping[str, str]],
    plan: Mapping[str, Any],
    created: Mapping[str, Any],
) -> dict[str, Any]:
    state = log.state
    verdict_ev = log.last("canary.verdict")
    limit = verdict_ev.index if verdict_ev else len(log.events)
    verdict = str(verdict_ev.details.get("verdict", "FAIL")) if verdict_ev else "PENDING"
    reasons = [str(r) for r in verdict_ev.details.get("reasons") or []] if verdict_ev else []
    failed = ids(verdict_ev.details, "failed") if verdict_ev else []
    if verdict == "FAIL" and not failed:
        failed = list(state.canaries)  # the machine reads an empty list as "all canaries"
    soak_done = log.last_of_stage(0, "soak.completed")
    soak_start = log.last_of_stage(0, "soak.started")
    soak_s = num(soak_done.details.get("seconds")) if soak_done else None
    if soak_s is None and verdict_ev is not None:
        soak_s = num(verdict_ev.details.get("soak_s"))
    policy = created.get("policy") or {}
    health_policy = policy.get("health") if isinstance(policy, Mapping) else None
    temp_max = num((health_policy or {}).get("temperature_c_max", 85.0))
    rows, boxes = [], []
    for dev in state.canaries:
        healths = [e for e in log.of_stage(0, "device.health", device=dev) if e.index <= limit]
        post = [e for e in healths if e.details.get("round") == "post-soak"]
        chosen = (post or healths)[-1] if healths else None
        sample = chosen.details.get("sample") if chosen else None
        baseline = chosen.details.get("baseline") if chosen else None
        if not baseline:
            b = log.last_of_stage(0, "device.baseline", device=dev)
            baseline = b.details.get("sample") if b else None
        if chosen is not None:
            status = str(chosen.details.get("status", "?")).upper()
        elif log.all("device.deploy_failed", "device.skipped", device=dev):
            status = "FAILED"
        else:
            status = "-"
        if verdict_ev is None:
            dev_verdict = "PENDING"
        else:
            dev_verdict = "FAIL" if verdict == "FAIL" and dev in failed else "PASS"
        why = [r for r in reasons if _mentions(r, dev)] if dev_verdict == "FAIL" else []
        if not why and status not in ("HEALTHY", "-"):
            why = [str(r) for r in (chosen.details.get("reasons") or [])] if chosen else []
            dfail = log.last("device.deploy_failed", device=dev)
            if not why and dfail is not None:
                step = dfail.details.get("step", "?")
                why = [f"{step} failed: {dfail.details.get('error', '')}"]
        pre = log.last_of_stage(0, "device.preflight", device=dev)
        disk_min = num(((pre.details.get("checks") or {}) if pre else {}).get("disk_needed_mb"))
        if disk_min is None:
            disk_min = num(plan.get("artifact", {}).get("disk_mb"))
        sample_d = sample if isinstance(sample, Mapping) else None
        if chosen is not None and sample_d is None:
            sample_d = {"app_up": False}  # the engine records no sample when health went unanswered
        rows.append(
            {
                "device_id": dev,
                "health": "OK" if status == "HEALTHY" else status,
                "round": chosen.details.get("round") if chosen else None,
                "cpu_percent": sample_d.get("cpu_percent") if sample_d else None,
                "mem_used_mb": sample_d.get("mem_used_mb") if sample_d else None,
                "error_rate": sample_d.get("error_rate") if sample_d else None,
                "latency_ms": sample_d.get("latency_ms") if sample_d else None,
            }
        )
        boxes.append(
            health_box_data(
                device_id=dev,
                device_type=info.get(dev, {}).get("hardware", "?"),
                status=status,
                sample=sample_d,
                baseline=baseline if isinstance(baseline, Mapping) else None,
                sample_round=rows[-1]["round"],
                disk_min_mb=disk_min,
                temperature_max_c=temp_max,
                verdict=dev_verdict,
                reason="; ".join(why),
            )
        )
    if verdict == "PASS":
        comparison = "Within bounds"
    elif verdict == "FAIL":
        comparison = "Not within bounds"
    else:
        comparison = "Pending"
    return {
        "reached": log.reached(Phase.VERIFY),
        "soak_s": soak_s,
        "soak_planned_s": num(soak_start.details.get("seconds")) if soak_start else None,
        "soak_served": soak_done is not None,
        "verdict": verdict,
        "verdict_ts": verdict_ev.ts if verdict_ev else None,
        "failed": failed,
        "all_failed": bool(verdict_ev.details.get("all_failed")) if verdict_ev else False,
        "reasons": reasons,
        "baseline_comparison": comparison,
        "rows": rows,
        "health_boxes": boxes,
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
    }
