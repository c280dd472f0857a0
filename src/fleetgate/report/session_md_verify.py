"""The VERIFY section of the session report in markdown, from the report dict alone.

The soak (with its extension or early stop), the verdict line (``verify.verdict_text``, with
the round note), the VERIFY table of every round, each canary's comparison with its control(s)
— a table per metric (medians, effect and interval, tolerance, verdict) and a sparkline of the
metric that decided, an inline SVG inside a ``<details>`` block so that hosts which strip SVG
(GitHub does) still show the tables — the judge's notes, the failed canaries, the decisions
between rounds, the CANARY HEALTH REPORT boxes and the approval. Every table ends at a blank
line; numbers are fields of the report, formatted (``report.metric_format.format_row``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from fleetgate.report.health_box import (
    fmt_mb,
    fmt_ms,
    fmt_percent,
    fmt_rate,
    render_health_box,
)
from fleetgate.report.md_text import ID_LIMIT as _ID_LIMIT
from fleetgate.report.md_text import duration as _duration
from fleetgate.report.md_text import ids_text as _ids
from fleetgate.report.md_text import table as _table
from fleetgate.report.metric_format import format_row


def _soak_text(v: Mapping[str, Any]) -> str:
    if v["soak_stopped_s"] is not None and not v["soak_extension_served"]:
        planned = v["soak_extended_s"] or v["soak_planned_s"]
        of = f" of {_duration(planned)}" if planned is not None else ""
        ext = " extension" if v["soak_extended_s"] is not None else ""
        text = f"stopped after {_duration(v['soak_stopped_s'])}{of}{ext}"
        if v["soak_extended_s"] is not None and v["soak_served"]:
            text = f"{_duration(v['soak_s'])}, extension {text}"
        return text + " (a hard health bound failed)"
    if v["soak_served"]:
        text = _duration(v["soak_s"])
        if v["soak_extended_s"] is not None:
            state = "" if v["soak_extension_served"] else " (in progress)"
            text += f" + {_duration(v['soak_extended_s'])} extended{state}"
        return text
    if v["soak_planned_s"] is not None:
        return f"{_duration(v['soak_planned_s'])} (in progress)"
    return "not served"


def _analysis(x: Mapping[str, Any]) -> list[str]:
    """A round's canary-vs-control evidence: per canary, its control and a table per metric,
    then a sparkline of the metric that decided (an inline SVG in a ``<details>`` block: hosts
    that strip SVG still show the tables); the judge's notes."""
    lines: list[str] = []
    if x["judge"] == "threshold":
        lines += ["", "**Judge**: threshold rules against each canary's own baseline"]
    for note in x["notes"]:
        lines += ["", f"> Note: {note}"]
    if x["without_control"] and x["analysis"]:
        lines += [
            "",
            f"**Without a control** (judged against their own baseline): "
            f"{_ids(x['without_control'])}",
        ]
    if not x["analysis"]:
        if x["controls"]:
            pairs = [f"{c} -> {' + '.join(pool)}" for c, pool in x["controls"].items()]
            later = " so far" if x["verdict"] == "PENDING" else ""
            lines += [
                "",
                f"**Controls** (sampled with the canaries, never deployed): {_ids(pairs)}; "
                f"sampled {x['ticks']} times{later}",
            ]
        return lines
    rows = [m for a in x["analysis"] for m in a["metrics"]]
    how = [f"sampled {x['ticks']} times over the soak"]
    if any(m["relative"] for m in rows):
        how.append(
            "% rows: the change from each device's own value before the soak, the effect in "
            "points of that change relative to the control"
        )
    if any(m["adjusted"] for m in rows):
        how.append("effects net of the canary-control difference measured before the deployment")
    how.append("error rate in percent, its effect in percentage points (pp)")
    lines += ["", f"**Canary vs control** ({'; '.join(how)}):"]
    ci = f"Effect [{100 * x['confidence']:g} % CI]"
    for a in x["analysis"]:
        if len(a["pool"]) > 1:
            against = "controls " + ", ".join(f"**{k}**" for k in a["pool"]) + " (pooled)"
            dashed = f"its {len(a['pool'])} controls (dashed, median per tick)"
        else:
            against, dashed = f"control **{a['control']}**", f"control {a['control']} (dashed)"
        lines += ["", f"**{a['canary']}** vs {against}: {a['verdict']}", ""]
        cols = ("metric", "canary", "control", "effect", "tolerated", "verdict")
        rows = [[f[c] for c in cols] for f in map(format_row, a["metrics"])]
        lines += _table(
            ["Metric", "Canary median", "Control median", ci, "Tolerated", "Verdict"], rows
        )
        spark = a["sparkline"]
        if spark is not None:
            scale = "relative to its own value before the soak" if spark["relative"] else ""
            summary = escape(
                f"{spark['metric']} over the soak: {a['canary']} (solid) vs {dashed}"
                f"{', ' + scale if scale else ''}"
            )
            lines += [
                "",
                f"<details><summary>{summary}</summary>",
                "",
                spark["svg"],
                "",
                "</details>",
            ]
    return lines


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
            f"verdict {x['verdict_text']}",
            *_verify_table(x["rows"]),
            *_analysis(x),
            *_failed_canaries(x),
            *_between_rounds(x),
        ]
    return lines


def render_verify_md(r: Mapping[str, Any]) -> list[str]:
    """The VERIFY section of a deployment that reached it, below its heading."""
    v, a = r["verify"], r["approval"]
    lines: list[str] = []
    text = v["verdict_text"]
    verdict = f"{text} ({v['verdict_note']})" if v["verdict_note"] else text
    lines += [f"**Soak period**: {_soak_text(v)}", f"**Canary verdict**: {verdict}"]
    if len(v["rounds"]) > 1 or v["verdict_note"]:
        # Every round, its own verdict and the decision between them: a FAIL is never hidden.
        lines += _rounds(v)
    else:
        lines += ["", *_verify_table(v["rows"]), *_analysis(v["rounds"][0])]
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
    unsure = a["verdict"] == "INCONCLUSIVE"
    if a["requested"] and unsure:
        lines.append(
            "**Requesting a human decision on an INCONCLUSIVE canary verdict** (the evidence "
            "above: approve to take the risk by name, or reject)"
        )
    elif a["requested"]:
        lines.append("**Requesting human approval for fleet rollout...**")
    if a["status"] in ("GRANTED", "REJECTED"):
        note = f' — "{a["comment"]}"' if a["comment"] else ""
        risk = ", accepting the INCONCLUSIVE verdict" if a["accept_inconclusive"] else ""
        lines.append(f"**Approval**: {a['status']} by {a['by']} at {a['ts']}{risk}{note}")
    elif a["status"] == "PENDING":
        dep = r["deployment_id"]
        how = f"fleetgate deploy approve {dep} --as NAME"
        if unsure:
            how += f" --accept-inconclusive, or fleetgate deploy reject {dep} --as NAME"
        lines.append(f"**Approval**: PENDING — {how}")
    else:
        lines.append(f"**Approval**: not requested (canary verdict {v['verdict']})")
    return lines
