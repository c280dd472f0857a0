"""The spec's session template as markdown, rendered from ``build_report``'s dict alone.

Shape (spec, "Session Template"): ``## Fleet Deployment: NAME vVERSION``, the Mode / Fleet /
Strategy lines, then ``### PREPARE Phase`` … ``### CONFIRM Phase`` separated by ``---``, a
``### ROLLBACK`` section when anything was rolled back, and the ``<fleet-deploy-state>`` block
(``core.state.render_state_block``, field names exactly as in the spec). A phase the deployment
never reached is one line saying where it stopped; CONFIRM still shows the fleet accounting
at the end of the log, because every device must be accounted for whatever the outcome.

Every number printed here is a field of the report dict, formatted — never recomputed — so the
markdown and ``--format json`` cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fleetgate.config.policy_file import format_duration
from fleetgate.report.health_box import (
    fmt_mb,
    fmt_ms,
    fmt_percent,
    fmt_rate,
    render_health_box,
)
from fleetgate.report.prepare import render_prepare_md

_SPEC_PHASES = ("PREPARE", "CANARY", "VERIFY", "ROLLOUT", "CONFIRM")
_STOPPED = {
    "HALTED": "halted",
    "ABORTED": "aborted",
    "ROLLED_BACK": "rolled back",
    "ROLLING_BACK": "rolling back",
    "COMPLETE": "complete",
    "PARTIAL": "ended PARTIAL",
}
_ID_LIMIT = 12  # a rollback of 10,000 devices lists a few ids and a count, not all of them
_TEXT_LIMIT = 200


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("-" * (len(h) + 2) for h in header) + "|",
    ]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _ids(ids: Sequence[str]) -> str:
    if not ids:
        return "-"
    shown = ", ".join(ids[:_ID_LIMIT])
    return shown if len(ids) <= _ID_LIMIT else f"{shown} … (+{len(ids) - _ID_LIMIT} more)"


def _devices(n: int) -> str:
    return f"{n} device" if n == 1 else f"{n} devices"


def _duration(seconds: Any) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "-"
    if float(seconds).is_integer():
        return format_duration(float(seconds))
    return f"{seconds:.1f}s" if seconds < 60 else format_duration(round(seconds))


def _short(text: str) -> str:
    """A heading-sized excerpt; the full text is in the JSON document and the VERIFY reasons."""
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1].rstrip() + "…"


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


def _soak_text(v: Mapping[str, Any]) -> str:
    if v["soak_served"]:
        return _duration(v["soak_s"])
    if v["soak_planned_s"] is not None:
        return f"{_duration(v['soak_planned_s'])} (in progress)"
    return "not served"


def _verify_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return _table(
        ["Device ID", "Health", "CPU", "Memory", "Error Rate", "Latency"],
        [
            [
                x["device_id"],
                x["health"],
                fmt_percent(x["cpu_percent"]),
                fmt_mb(x["mem_used_mb"]),
                fmt_rate(x["error_rate"]),
                fmt_ms(x["latency_ms"]),
            ]
            for x in rows
        ],
    )


def _failed_canaries(v: Mapping[str, Any]) -> list[str]:
    lines = ["", *(f"- {reason}" for reason in v["reasons"])] if v["reasons"] else []
    if v["verdict"] == "FAIL":
        what = "all canaries failed" if v["all_failed"] else "some canaries failed"
        lines += ["", f"**Failed canaries**: {_ids(v['failed'])} ({what})"]
    return lines


def _between_rounds(x: Mapping[str, Any]) -> list[str]:
    """The human decision after a failed round, and what ``canary.replaced`` made of it."""
    lines: list[str] = []
    d, rep = x["decision"], x["replaced"]
    if d is not None:
        note = f' — "{d["comment"]}"' if d["comment"] else ""
        by = f"resumed by {d['by']} at {d['ts']}, canary_failure={d['choice']}"
        lines += ["", f"**Decision**: {by}{note}"]
    if rep is None:
        return lines
    nxt = rep["round"] or x["round"] + 1
    lines += ["", f"**Canaries replaced** (for round {nxt}): retired {_ids(rep['retired'])}"]
    for c in rep["replacements"][:_ID_LIMIT]:
        lines.append(f"- replacement {c['device_id']}: {c['why'] or '-'}")
    if len(rep["replacements"]) > _ID_LIMIT:
        lines.append(f"- … (+{len(rep['replacements']) - _ID_LIMIT} more replacements)")
    if not rep["replacements"]:
        lines.append("- no replacement canary")
    for c in rep["excluded"][:_ID_LIMIT]:
        lines.append(f"- excluded {c['device_id']}: {c['reason'] or '-'}")
    if len(rep["excluded"]) > _ID_LIMIT:
        lines.append(f"- … (+{len(rep['excluded']) - _ID_LIMIT} more excluded)")
    if rep["uncovered"]:
        lines.append(f"- uncovered (no canary proves): {', '.join(rep['uncovered'])}")
    return lines


def _rounds(v: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for x in v["rounds"]:
        lines += [
            "",
            f"**Round {x['round']}**: canaries {_ids(x['canaries'])}; soak {_soak_text(x)}; "
            f"verdict {x['verdict']}",
            *_verify_table(x["rows"]),
            *_failed_canaries(x),
            *_between_rounds(x),
        ]
    return lines


def _verify(r: Mapping[str, Any]) -> list[str]:
    v, a = r["verify"], r["approval"]
    lines = ["### VERIFY Phase", ""]
    if not v["reached"]:
        return [*lines, _not_reached(r)]
    verdict = f"{v['verdict']} ({v['verdict_note']})" if v["verdict_note"] else v["verdict"]
    lines += [f"**Soak period**: {_soak_text(v)}", f"**Canary verdict**: {verdict}"]
    if len(v["rounds"]) > 1 or v["verdict_note"]:
        # Every round, its own verdict and the decision between them: a FAIL is never hidden.
        lines += _rounds(v)
    else:
        lines += ["", *_verify_table(v["rows"])]
    lines += ["", f"**Baseline comparison**: {v['baseline_comparison']}"]
    if len(v["rounds"]) == 1 and not v["verdict_note"]:
        lines += _failed_canaries(v)
    by_round: dict[int, list[Mapping[str, Any]]] = {}
    for box in v["health_boxes"]:
        by_round.setdefault(box["canary_round"], []).append(box)
    for n, boxes in sorted(by_round.items()):
        if len(v["rounds"]) > 1:
            lines += ["", f"**Canary health reports, round {n}**:"]
        for box in boxes:
            lines += ["", "```", *render_health_box(box), "```"]
    lines.append("")
    if a["requested"]:
        lines.append("**Requesting human approval for fleet rollout...**")
    if a["status"] in ("GRANTED", "REJECTED"):
        note = f' — "{a["comment"]}"' if a["comment"] else ""
        lines.append(f"**Approval**: {a['status']} by {a['by']} at {a['ts']}{note}")
    elif a["status"] == "PENDING":
        lines.append(
            f"**Approval**: PENDING — fleetgate deploy approve {r['deployment_id']} --as NAME"
        )
    else:
        lines.append(f"**Approval**: not requested (canary verdict {v['verdict']})")
    return lines


def _wave(w: Mapping[str, Any]) -> list[str]:
    head = f"**Wave {w['number']}** ({w['percent']:g}% of fleet):"
    if not w["reached"]:
        return [f"{head} _not reached_"]
    if w["soak_state"] == "in progress":
        soak = f"{_duration(w['soak_s'])} (in progress)"
    else:
        soak = _duration(w["soak_s"])
    rows: list[list[Any]] = [
        ["Devices targeted", w["targeted"]],
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
