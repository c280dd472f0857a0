"""The spec's session template as markdown, rendered from ``build_report``'s dict alone.

Shape (spec, "Session Template"): ``## Fleet Deployment: NAME vVERSION``, the Mode / Fleet /
Strategy lines, then ``### PREPARE Phase`` … ``### CONFIRM Phase`` separated by ``---``, a
``### ROLLBACK`` section when anything was rolled back, and the ``<fleet-deploy-state>`` block
(``core.state.render_state_block``, field names exactly as in the spec). A phase the deployment
never reached is one line saying where it stopped; CONFIRM still shows the fleet accounting
at the end of the log, because every device must be accounted for whatever the outcome.

Every number printed here is a field of the report dict, formatted — never recomputed — so the
markdown and ``--format json`` cannot disagree. The VERIFY section is ``session_md_verify``;
the shared table and list helpers are ``md_text``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fleetgate.report.md_text import ID_LIMIT as _ID_LIMIT
from fleetgate.report.md_text import devices_text as _devices
from fleetgate.report.md_text import duration as _duration
from fleetgate.report.md_text import ids_text as _ids
from fleetgate.report.md_text import short as _short
from fleetgate.report.md_text import table as _table
from fleetgate.report.prepare import render_prepare_md
from fleetgate.report.session_md_verify import render_verify_md

_SPEC_PHASES = ("PREPARE", "CANARY", "VERIFY", "ROLLOUT", "CONFIRM")
_STOPPED = {
    "HALTED": "halted",
    "ABORTED": "aborted",
    "ROLLED_BACK": "rolled back",
    "ROLLING_BACK": "rolling back",
    "COMPLETE": "complete",
    "PARTIAL": "ended PARTIAL",
}


def _not_reached(r: Mapping[str, Any]) -> str:
    reached = {
        "PREPARE": True,
        "CANARY": r["canary"]["reached"],
        "VERIFY": r["verify"]["reached"],
        "ROLLOUT": any(w["reached"] for w in r["rollout"]),
        "CONFIRM": r["confirm"]["reached"],
    }
    last = [p for p in _SPEC_PHASES if reached[p]][-1]
    phase = r["phase"]
    if phase == "AWAITING_APPROVAL":
        return "_not reached yet: waiting for human approval of the fleet rollout_"
    if phase in _STOPPED:
        return f"_not reached: deployment {_STOPPED[phase]} in {last}_"
    return f"_not reached yet: deployment in progress ({phase})_"


def _header(r: Mapping[str, Any]) -> list[str]:
    s = r["strategy"]
    waves = " -> ".join(f"{p:g}%" for p in s["cumulative_percent"])
    fleet = f"Fleet: {r['fleet_total']} devices across {len(r['groups'])} groups"
    if r["targeted"] != r["fleet_total"]:
        fleet += f" ({r['targeted']} targeted)"
    return [
        f"## Fleet Deployment: {r['name']} v{r['version']}",
        "",
        "Mode: Semi-Autonomous (fleet-deployment-agent)",
        fleet,
        f"Strategy: {s['summary']} ({s['canaries']} canaries, then {s['waves']} waves: {waves})",
        f"Deployment ID: {r['deployment_id']}",
    ]


def _prepare(r: Mapping[str, Any]) -> list[str]:
    p = r["prepare"]
    lines = render_prepare_md(dict(p["plan"])).rstrip("\n").split("\n")
    if p["checks"]:
        lines += ["", f"**Pre-deployment checks**: {p['status']}"]
        rows = [[c["check"], "OK" if c["ok"] else "FAIL", c["detail"] or "-"] for c in p["checks"]]
        lines += _table(["Check", "Result", "Detail"], rows)
    if p["status"] == "FAILED":
        lines += ["", f"**PREPARE failed**: {p['reason'] or 'see checks'}"]
    if p["short_soak"]:
        ss = p["short_soak"]
        lines += [
            "",
            "> Short soak allowed by the policy (audited): canary "
            f"{_duration(ss.get('canary_s'))}, "
            f"between waves {_duration(ss.get('between_waves_s'))}",
        ]
    return lines


def _canary(r: Mapping[str, Any]) -> list[str]:
    c = r["canary"]
    lines = ["### CANARY Phase", ""]
    if not c["reached"]:
        return [*lines, _not_reached(r)]
    lines += _table(
        ["Device ID", "Transfer", "Deploy", "Smoke Test", "Status"],
        [[x["device_id"], x["transfer"], x["deploy"], x["smoke"], x["status"]] for x in c["rows"]],
    )
    joined: dict[int, list[str]] = {}
    for x in c["rows"]:
        if x["round"] > 1:
            joined.setdefault(x["round"], []).append(f"{x['device_id']}: {x['why'] or '-'}")
    for n, names in sorted(joined.items()):
        more = f" … (+{len(names) - _ID_LIMIT} more)" if len(names) > _ID_LIMIT else ""
        lines += ["", f"**Replacement canaries, round {n}**: {'; '.join(names[:_ID_LIMIT])}{more}"]
    if c["unreachable"]:
        lines += ["", f"**Unreachable at pre-flight**: {_ids(c['unreachable'])}"]
    for d in c["rollback_drill"]:
        again = "and forward again" if d["forward_again"] else "(not yet forward again)"
        lines += ["", f"**Rollback drill**: {d['device_id']} rolled back to {d['to']} {again}"]
    return lines


def _verify(r: Mapping[str, Any]) -> list[str]:
    lines = ["### VERIFY Phase", ""]
    if not r["verify"]["reached"]:
        return [*lines, _not_reached(r)]
    return [*lines, *render_verify_md(r)]


def _wave(w: Mapping[str, Any]) -> list[str]:
    head = f"**Wave {w['number']}** ({w['percent']:g}% of fleet):"
    if not w["reached"]:
        return [f"{head} _not reached_"]
    if w["soak_state"] == "in progress":
        soak = f"{_duration(w['soak_s'])} (in progress)"
    else:
        soak = _duration(w["soak_s"])
    rows: list[list[Any]] = [["Devices targeted", w["targeted"]]]
    if w.get("attempted", w["targeted"]) != w["targeted"]:
        # Set-aside devices are not in the failure rate's denominator (ADR 0020).
        rows.append(["Devices attempted (the failure rate's base)", w["attempted"]])
    rows += [
        ["Devices deployed", w["deployed"]],
        ["Devices failed", w["failed"]],
    ]
    if w["skipped"]:
        rows.append(["Devices skipped (unreachable)", w["skipped"]])
    rows += [["Health check", w["health_check"]], ["Soak period", soak]]
    lines = [head, *_table(["Metric", "Value"], rows), ""]  # a table ends at a blank line
    if w["decision"]:
        detail = []
        if w["failure_rate"] is not None:
            detail.append(f"{100 * w['failure_rate']:.1f}% failed")
        if w["scope"] and w["scope"] != "NONE":
            detail.append(f"scope {w['scope']}")
        extra = f" ({', '.join(detail)})" if detail else ""
        reason = f" — {w['reason']}" if w["reason"] else ""
        lines.append(f"**Decision**: {w['decision']}{extra}{reason}")
    if w["failed_ids"]:
        why = w["failed_reasons"]
        named = [f"{i} ({_short(why[i])})" if why.get(i) else i for i in w["failed_ids"]]
        lines.append(f"**Failed devices**: {_ids(named)}")
    if w["skipped_ids"]:
        lines.append(f"**Skipped devices**: {_ids(w['skipped_ids'])}")
    if w["resumed"]:
        res = w["resumed"]
        note = f' — "{res["comment"]}"' if res["comment"] else ""
        lines.append(f"**Resumed** by {res['by']} at {res['ts']}{note}")
    return lines[:-1] if lines[-1] == "" else lines


def _rollout(r: Mapping[str, Any]) -> list[str]:
    lines = ["### ROLLOUT Phase", ""]
    if not any(w["reached"] for w in r["rollout"]):
        return [*lines, _not_reached(r)]
    for i, w in enumerate(r["rollout"]):
        lines += ([""] if i else []) + _wave(w)
    return lines


def _rollbacks(r: Mapping[str, Any]) -> list[str]:
    lines = ["### ROLLBACK", ""]
    for i, rb in enumerate(r["rollbacks"]):
        reason = f": {_short(rb['reason'])}" if rb["reason"] else ""
        lines += [""] if i else []
        lines.append(f"**Rollback {rb['number']}** ({rb['scope']}, during {rb['phase']}){reason}")
        rows: list[list[Any]] = [
            ["Devices", f"{len(rb['devices'])} ({_ids(rb['devices'])})"],
            ["Rolled back", len(rb["rolled_back"])],
            ["Failed", len(rb["failed"])],
            ["Recovered to baseline", len(rb["recovered"])],
            ["Duration", _duration(rb["seconds"]) if rb["completed"] else "in progress"],
        ]
        if rb["requested_by"]:
            rows.insert(0, ["Requested by", rb["requested_by"]])
        if rb["logs_captured"]:
            rows.append(["Logs captured", len(rb["logs_captured"])])
        lines += _table(["Metric", "Value"], rows)
        if rb["failures"] or rb["capability"] is not None:
            lines.append("")  # a table ends at a blank line
        for f in rb["failures"]:
            lines.append(
                f"**ROLLBACK FAILED** on {f['device_id']} (highest severity): {f['error']} — "
                "every deployment action stopped; device marked for manual intervention"
            )
        if rb["capability"] is not None:
            cap = rb["capability"]
            missing = f" ({_ids(cap['missing'])})" if cap["missing"] else ""
            lines.append(
                f"**Rollback capability re-verified**: {len(cap['ok'])} devices OK, "
                f"{len(cap['missing'])} missing{missing}"
            )
    return lines


def _count(x: Any) -> int:
    return len(x) if isinstance(x, list) else int(x) if isinstance(x, int | float) else 0


def _confirm(r: Mapping[str, Any]) -> list[str]:
    c = r["confirm"]
    lines = ["### CONFIRM Phase", ""]
    label = "**Fleet status**:"
    if not c["reached"]:
        lines += [_not_reached(r), ""]
        label = "**Fleet status** (at the end of the log):"
    lines.append(label)
    lines += _table(
        ["Status", "Count", "Percentage"],
        [[x["status"], x["count"], f"{x['percent']:.1f}%"] for x in c["rows"]],
    )
    if c["set_aside"]:
        # Every one of them, whatever the fleet's size: each needs its reason documented.
        lines += ["", f"**Set aside** ({_devices(len(c['set_aside']))}):"]
        lines += _table(
            ["Device ID", "Status", "Reason"],
            [[x["device"], x["status"], x["reason"]] for x in c["set_aside"]],
        )
    if c["registry_quarantined"]:
        n = len(c["registry_quarantined"])
        lines += [
            "",
            f"**Quarantine list**: {_devices(n)} put on the registry's quarantine list "
            f"({_ids(c['registry_quarantined'])}); the next plan leaves them out until "
            "fleetgate registry release ID",
        ]
    if c["rollback_copies"] is not None:
        rc = c["rollback_copies"]
        lines += [
            "",
            f"**Rollback copies**: {_count(rc.get('ok'))} present, "
            f"{_count(rc.get('missing'))} missing",
        ]
    if c["health"] is not None:
        h = c["health"]
        lines.append(
            f"**Fleet health**: {_count(h.get('healthy'))} healthy, "
            f"{_count(h.get('degraded'))} degraded, {_count(h.get('failed'))} failed"
        )
    lines += ["", f"**Deployment result**: {c['result']}"]
    if c["reasons"]:
        lines += ["", *(f"- {reason}" for reason in c["reasons"])]
    return lines


def render_report_md(report: Mapping[str, Any]) -> str:
    """The session template in markdown, ending with the ``<fleet-deploy-state>`` block."""
    sections = [_header(report), _prepare(report), _canary(report), _verify(report)]
    sections.append(_rollout(report))
    if report["rollbacks"]:
        sections.append(_rollbacks(report))
    last = _confirm(report)
    last += ["", *(f"> Note: {w}" for w in report["warnings"])] if report["warnings"] else []
    last += ["", report["state_block"]]
    sections.append(last)
    body = "\n\n---\n\n".join("\n".join(s) for s in sections)
    return body + "\n\n---\n"
