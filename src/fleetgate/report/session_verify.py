"""The VERIFY section of the session report: every canary round, and one health box per canary.

A deployment's canary stage can run more than once (invariant 11): a partial canary FAIL rolls
the failed canaries back and quarantines them and halts; a human resumes with a choice
(``deployment.resumed`` details ``canary_failure``: ``replace`` | ``exclude``), the engine
records ``canary.replaced`` (replacement canaries and why, excluded devices, uncovered values),
and round 2 runs the whole canary stage and a soak for its canaries, ending in its own
``canary.verdict``. The first FAIL stays in the log, and stays in this section:

- ``rounds``: one entry per round, in order: its canaries, soak, verdict, failed canaries and
  reasons, its VERIFY table rows, and — when the round failed and the deployment went on — the
  human decision and the ``canary.replaced`` outcome that led to the next round.
- ``verdict`` is the last round's (PENDING while a round runs); ``verdict_note`` says which round
  it is and every earlier FAIL and decision ("round 2, after round 1 FAIL; replacements approved
  by bob"), so a later PASS never hides a FAIL.
- Canary analysis (issue 11): each round carries its evidence (``report.canary_evidence``):
  ``judge`` (analysis | threshold), ``notes``, ``controls`` and ``without_control``, ``ticks``
  (samples of the soak), ``analysis`` (per canary: control(s), verdict, per-metric rows, the
  metric that decided and its sparkline). The soak reads with its extension (``soak-ext``:
  "10m + 15m extended") or its early stop (``soak.stopped``); another sampling window of stage
  0 is not the soak. ``verdict_text`` is the verdict in words — "INCONCLUSIVE after the
  extended soak: latency_ms on rpi-c-01 (…); approved by alice accepting the risk" — naming
  the deciding metrics, and for INCONCLUSIVE the human decision that followed (the first
  ``approval.granted``/``rejected`` after the verdict, with ``accept_inconclusive``); just the
  verdict word for a round judged without analysis.
- Boxes: one per canary (replacements included), from the last round that judged it. Its Verdict
  is the canary's own: FAIL when it is in that round's failed list (an empty list on a FAIL
  verdict means every canary of the round), PASS only when the round passed, INCONCLUSIVE when
  it is in the round's ``inconclusive`` list, NOT PROVEN when the round failed or was
  inconclusive for other canaries (its own checks passed, but no verdict of that round proved
  the release — a person accepting an INCONCLUSIVE verdict takes a risk, it proves nothing),
  PENDING while the round runs. Status is what the round's health check said,
  with the device's status now when it changed since ("FAILED (now QUARANTINED)"). Reason is
  the verdict's reasons naming the device, else why the fold set it aside (``state.reasons``).

Round boundaries: a round's evidence is the stage-0 events after the ``canary.replaced`` that
opened it (or the log's start) up to its own verdict. A round's number is 1 + the
``canary.replaced`` events before it (the machine's ``canary_round``); its canaries are the
previous round's minus the ``retired`` ones, plus the ``replacements``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetgate.core.policy import AnalysisPolicy
from fleetgate.core.state import Phase
from fleetgate.report.canary_evidence import round_evidence, soak_round, verdict_text
from fleetgate.report.health_box import health_box_data
from fleetgate.report.session_log import LogEvent, SessionLog, display_status, ids, num

_CHOICE_TEXT = {
    "replace": "replacements approved",
    "exclude": "failed cells excluded",
}


@dataclass(slots=True)
class _Round:
    number: int
    start: int  # index of the event that opened the round (-1: the log's start)
    canaries: list[str]
    verdict: LogEvent | None = None
    resumed: LogEvent | None = None
    replaced: LogEvent | None = None

    def holds(self, e: LogEvent) -> bool:
        """``e`` is evidence of this round."""
        return self.start < e.index and (self.verdict is None or e.index <= self.verdict.index)

    @property
    def word(self) -> str:
        return str(self.verdict.details.get("verdict", "FAIL")) if self.verdict else "PENDING"

    @property
    def failed(self) -> list[str]:
        if self.verdict is None:
            return []
        failed = ids(self.verdict.details, "failed")
        if self.word == "FAIL" and not failed:
            return list(self.canaries)  # the machine reads an empty list as "all canaries"
        return failed


def _rounds(log: SessionLog) -> list[_Round]:
    state = log.state
    added = {i for e in log.all("canary.replaced") for i in ids(e.details, "replacements")}
    cur = _Round(1, -1, [i for i in state.canaries if i not in added])
    out = [cur]
    for e in log.all("canary.verdict", "canary.replaced", "deployment.resumed"):
        if e.action == "canary.verdict":
            # One per round: the machine refuses a second before ``canary.replaced``.
            cur.verdict = cur.verdict or e
        elif e.action == "deployment.resumed":
            if cur.word == "FAIL" and cur.resumed is None and cur.replaced is None:
                cur.resumed = e
        else:
            cur.replaced = e
            retired = set(ids(e.details, "retired"))
            kept = [i for i in cur.canaries if i not in retired]
            cur = _Round(cur.number + 1, e.index, kept + ids(e.details, "replacements"))
            out.append(cur)
    return out


def _mentions(text: str, dev: str) -> bool:
    return re.search(rf"(?<![\w.-]){re.escape(dev)}(?![\w.-])", text) is not None


def _in(r: _Round, events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if r.holds(e)]


def _own_verdict(r: _Round, dev: str) -> str:
    if r.verdict is None:
        return "PENDING"
    if dev in r.failed:
        return "FAIL"
    if r.word == "INCONCLUSIVE" and dev in ids(r.verdict.details, "inconclusive"):
        return "INCONCLUSIVE"
    return "PASS" if r.word == "PASS" else "NOT PROVEN"


def _canary_evidence(
    log: SessionLog,
    r: _Round,
    dev: str,
    info: Mapping[str, Mapping[str, str]],
    plan: Mapping[str, Any],
    temp_max: float | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One canary's VERIFY row and health box for round ``r``."""
    healths = _in(r, log.of_stage(0, "device.health", device=dev))
    post = [e for e in healths if e.details.get("round") == "post-soak"]
    chosen = (post or healths)[-1] if healths else None
    sample = chosen.details.get("sample") if chosen else None
    baseline = chosen.details.get("baseline") if chosen else None
    if not baseline:
        b = log.last_of_stage(0, "device.baseline", device=dev)
        baseline = b.details.get("sample") if b else None
    not_deployed = _in(r, log.all("device.deploy_failed", "device.skipped", device=dev))
    if chosen is not None:
        status = str(chosen.details.get("status", "?")).upper()
    elif not_deployed:
        status = "FAILED"
    else:
        status = "-"
    own = _own_verdict(r, dev)
    reasons = [str(x) for x in (r.verdict.details.get("reasons") or [])] if r.verdict else []
    why: list[str] = []
    if own == "FAIL":
        why = [x for x in reasons if _mentions(x, dev)]
        if not why and dev in log.state.reasons:
            why = [log.state.reasons[dev]]
        if not why:
            why = reasons
    elif own == "INCONCLUSIVE":
        why = [x for x in reasons if _mentions(x, dev)]
    elif own == "NOT PROVEN" and r.word == "INCONCLUSIVE":
        unsure = ", ".join(ids(r.verdict.details, "inconclusive") if r.verdict else []) or "?"
        why = [
            f"its own checks passed; round {r.number} verdict INCONCLUSIVE ({unsure} inconclusive)"
        ]
    elif own == "NOT PROVEN":
        failed = ", ".join(r.failed) or "the round"
        why = [f"its own checks passed; round {r.number} verdict FAIL ({failed} failed)"]
    if not why and status not in ("HEALTHY", "-"):
        why = [str(x) for x in (chosen.details.get("reasons") or [])] if chosen else []
        dfail = not_deployed[-1] if not_deployed else None
        if not why and dfail is not None:
            if dfail.action == "device.skipped":
                why = [f"skipped: {dfail.details.get('reason', '')}"]
            else:
                why = [f"{dfail.details.get('step', '?')} failed: {dfail.details.get('error', '')}"]
    pre = log.last_of_stage(0, "device.preflight", device=dev)
    disk_min = num(((pre.details.get("checks") or {}) if pre else {}).get("disk_needed_mb"))
    if disk_min is None:
        disk_min = num(plan.get("artifact", {}).get("disk_mb"))
    sample_d = sample if isinstance(sample, Mapping) else None
    if chosen is not None and sample_d is None:
        sample_d = {"app_up": False}  # the engine records no sample when health went unanswered
    row = {
        "device_id": dev,
        "health": "OK" if status == "HEALTHY" else status,
        "round": chosen.details.get("round") if chosen else None,
        "cpu_percent": sample_d.get("cpu_percent") if sample_d else None,
        "mem_used_mb": sample_d.get("mem_used_mb") if sample_d else None,
        "error_rate": sample_d.get("error_rate") if sample_d else None,
        "latency_ms": sample_d.get("latency_ms") if sample_d else None,
    }
    box = health_box_data(
        device_id=dev,
        device_type=info.get(dev, {}).get("hardware", "?"),
        status=status,
        sample=sample_d,
        baseline=baseline if isinstance(baseline, Mapping) else None,
        sample_round=row["round"],
        disk_min_mb=disk_min,
        temperature_max_c=temp_max,
        verdict=own,
        reason="; ".join(why),
        device_status=display_status(log.state.devices[dev]),
        canary_round=r.number,
    )
    return row, box


def _extension(e: LogEvent) -> bool:
    return str(e.details.get("round", "")).endswith("-ext")


def _soak(log: SessionLog, r: _Round) -> dict[str, Any]:
    """The round's soak, its extension (an INCONCLUSIVE analysis extends it once: round
    ``…-ext``) and an early stop (``soak.stopped``: a hard bound failed during it)."""
    events = [
        e
        for e in _in(r, log.of_stage(0, "soak.started", "soak.completed", "soak.stopped"))
        if soak_round(e.details.get("round"))
    ]
    main = [e for e in events if not _extension(e)]
    ext = [e for e in events if _extension(e)]
    done = [e for e in main if e.action == "soak.completed"]
    start = [e for e in main if e.action == "soak.started"]
    soak_s = num(done[-1].details.get("seconds")) if done else None
    if soak_s is None and r.verdict is not None:
        soak_s = num(r.verdict.details.get("soak_s"))
    ext_start = [e for e in ext if e.action == "soak.started"]
    stopped = [e for e in events if e.action == "soak.stopped"]
    return {
        "soak_s": soak_s,
        "soak_planned_s": num(start[-1].details.get("seconds")) if start else None,
        "soak_served": bool(done),
        "soak_extended_s": num(ext_start[-1].details.get("seconds")) if ext_start else None,
        "soak_extension_served": any(e.action == "soak.completed" for e in ext),
        "soak_stopped_s": num(stopped[-1].details.get("served_s")) if stopped else None,
    }


def _approval_after(log: SessionLog, r: _Round) -> dict[str, Any] | None:
    """The human decision on this round's verdict (approval granted or rejected), if any."""
    if r.verdict is None:
        return None
    end = r.replaced.index if r.replaced is not None else len(log.events)
    for e in log.all("approval.granted", "approval.rejected"):
        if r.verdict.index < e.index < end:
            return {
                "action": e.action,
                "by": e.actor,
                "accept_inconclusive": bool(e.details.get("accept_inconclusive")),
            }
    return None


def _evidence(
    log: SessionLog, r: _Round, confidence: float
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The round's canary-vs-control evidence (``report.canary_evidence``) and the human
    decision on its verdict."""
    ticks = [e.details for e in _in(r, log.of_stage(0, "soak.sampled"))]
    last = r.verdict.index if r.verdict is not None else len(log.events)
    chosen = [e for e in log.all("canary.controls") if e.index <= last]
    baselines: dict[str, Mapping[str, Any] | None] = {}
    for dev in r.canaries:
        b = log.all("device.baseline", device=dev)
        sample = b[0].details.get("sample") if b else None  # the engine keeps the first
        baselines[dev] = sample if isinstance(sample, Mapping) else None
    evidence = round_evidence(
        r.verdict.details if r.verdict else None,
        ticks,
        chosen[-1].details if chosen else None,
        baselines,
        confidence,
    )
    return evidence, _approval_after(log, r)


def _decision(e: LogEvent | None) -> dict[str, Any] | None:
    if e is None:
        return None
    return {
        "by": e.actor,
        "ts": e.ts,
        # The machine reads a resume without a choice as "replace".
        "choice": str(e.details.get("canary_failure") or "replace"),
        "comment": str(e.details.get("comment") or ""),
    }


def _replaced(e: LogEvent | None) -> dict[str, Any] | None:
    if e is None:
        return None
    d = e.details
    why, reasons = d.get("why"), d.get("reasons")
    why = why if isinstance(why, Mapping) else {}
    reasons = reasons if isinstance(reasons, Mapping) else {}
    return {
        "ts": e.ts,
        "decision": str(d.get("decision", "")),
        "round": int(num(d.get("round")) or 0) or None,
        "retired": ids(d, "retired"),
        "replacements": [
            {"device_id": i, "why": str(why.get(i, ""))} for i in ids(d, "replacements")
        ],
        "excluded": [
            {"device_id": i, "reason": str(reasons.get(i, ""))} for i in ids(d, "excluded")
        ],
        "uncovered": ids(d, "uncovered"),
    }


def _note(rounds: list[dict[str, Any]]) -> str:
    """Which round the top-level verdict is, and every earlier FAIL and decision."""
    if len(rounds) == 1 and rounds[0]["decision"] is None:
        return ""
    last = rounds[-1]
    head = f"round {last['round']}"
    if last["verdict"] == "PENDING":
        head += " in progress"
    parts = [head]
    earlier = [x for x in rounds[:-1] if x["verdict"] == "FAIL"]
    if earlier:
        parts[0] += ", after " + ", ".join(f"round {x['round']} FAIL" for x in earlier)
    for x in rounds:
        d = x["decision"]
        if d is not None:
            what = _CHOICE_TEXT.get(d["choice"], f"canary_failure={d['choice']}")
            pending = "" if x["replaced"] is not None else ", not applied yet"
            parts.append(f"{what} by {d['by']}{pending}")
    return "; ".join(parts)


def verify_section(
    log: SessionLog,
    info: Mapping[str, Mapping[str, str]],
    plan: Mapping[str, Any],
    created: Mapping[str, Any],
) -> dict[str, Any]:
    policy = created.get("policy") or {}
    health_policy = policy.get("health") if isinstance(policy, Mapping) else None
    temp_max = num((health_policy or {}).get("temperature_c_max", 85.0))
    analysis_policy = policy.get("analysis") if isinstance(policy, Mapping) else None
    confidence = num((analysis_policy or {}).get("confidence"))
    confidence = AnalysisPolicy().confidence if confidence is None else confidence
    rounds = _rounds(log)
    last_judged: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    out_rounds: list[dict[str, Any]] = []
    for r in rounds:
        rows = []
        for dev in r.canaries:
            row, box = _canary_evidence(log, r, dev, info, plan, temp_max)
            rows.append(row)
            last_judged[dev] = (row, box)
        reasons = [str(x) for x in (r.verdict.details.get("reasons") or [])] if r.verdict else []
        soak = _soak(log, r)
        evidence, approval = _evidence(log, r, confidence)
        text = verdict_text(
            r.word, evidence, extended=soak["soak_extension_served"], decision=approval
        )
        out_rounds.append(
            {
                "round": r.number,
                "canaries": list(r.canaries),
                "verdict": r.word,
                "verdict_text": text,
                "ts": r.verdict.ts if r.verdict else None,
                "failed": r.failed,
                "inconclusive": ids(r.verdict.details, "inconclusive") if r.verdict else [],
                "all_failed": bool(r.verdict.details.get("all_failed")) if r.verdict else False,
                "reasons": reasons,
                **soak,
                **evidence,
                "rows": rows,
                "decision": _decision(r.resumed),
                "replaced": _replaced(r.replaced),
            }
        )
    last = out_rounds[-1]
    comparison = {
        "PASS": "Within bounds",
        "FAIL": "Not within bounds",
        "INCONCLUSIVE": "Inconclusive (a person decides)",
    }.get(last["verdict"], "Pending")
    order = [i for i in log.state.canaries if i in last_judged]
    return {
        "reached": log.reached(Phase.VERIFY),
        "soak_s": last["soak_s"],
        "soak_planned_s": last["soak_planned_s"],
        "soak_served": last["soak_served"],
        "soak_extended_s": last["soak_extended_s"],
        "soak_extension_served": last["soak_extension_served"],
        "soak_stopped_s": last["soak_stopped_s"],
        "verdict": last["verdict"],
        "verdict_text": last["verdict_text"],
        "verdict_note": _note(out_rounds),
        "verdict_ts": last["ts"],
        "failed": last["failed"],
        "inconclusive": last["inconclusive"],
        "all_failed": last["all_failed"],
        "reasons": last["reasons"],
        "baseline_comparison": comparison,
        "rows": [last_judged[i][0] for i in order],
        "health_boxes": [last_judged[i][1] for i in order],
        "rounds": out_rounds,
    }
