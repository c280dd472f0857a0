"""The evidence of a canary round judged by analysis (issue 11): canary vs control, per metric.

``round_evidence`` reads what the engine recorded for one canary round — ``canary.controls``
(each canary's control, or pool of controls, the controls' samples before the soak, canaries
``without`` one), ``soak.sampled`` (the time series), ``canary.verdict`` (``judge``, ``notes``,
``analysis``) — and returns the JSON-safe evidence the VERIFY section shows: per canary, its
control(s), verdict, the judge's rows per metric, the metric that decided, and a sparkline of
it (``report.sparkline``). ``verdict_text`` says the round's verdict in words; the markdown
formats these fields (``report.metric_format``) and computes nothing of its own.

Readings of the log (kept here so the engine can match):

- **Controls**: ``canary.controls.pools`` {canary: [controls]} when the engine pooled several,
  else ``controls`` {canary: control}; ``analysis[c].control`` names the first.
- **Ratio or additive.** A metric row's ``relative`` when the engine records it. Otherwise the
  engine's rule, applied to the same recorded samples: ``error_rate`` and ``restarts`` are
  compared as they are, and so is a shift "adjusted for the pre-deployment difference" (the
  judge's reason says so); every other metric as a ratio to each device's own value before
  the soak (the canary's first ``device.baseline``, each control's ``canary.controls.pre``)
  when the canary and every control have a positive one (``engine.canary_analysis._scales``).
  ``adjusted``: the effect is the shift during the soak minus the one measured before the
  deployment (``baseline_adjusted`` when recorded, else the reason's words). How each kind of
  row prints: ``report.metric_format``.
- **Harmful direction**: the sign the judge's reason gives its tolerance ("tolerated +0.25"),
  else the default metric's, else an increase.
- **The metric that decided** (sparkline): the deciding (critical) metric with the worst
  verdict (FAIL = NO_DATA > INCONCLUSIVE), else ``latency_ms``, else the first metric.
- **Time**: only the soak's ticks (rounds ``soak``, ``soak-rN``, ``…-ext``; another sampling
  window of stage 0 is not the soak). ``soak.sampled.t`` restarts at 0 in an extended soak;
  the sparkline places each soak after the previous one's last tick and marks where the
  extension began. A pool's line is, per tick, the median of its controls.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fleetgate.core.analysis import DEFAULT_METRICS, Direction
from fleetgate.report.metric_format import format_row
from fleetgate.report.sparkline import sparkline_svg

ADDITIVE = frozenset({"error_rate", "restarts"})
_SEVERITY = {"PASS": 0, "INCONCLUSIVE": 1, "FAIL": 2, "NO_DATA": 2}
_DEFAULT_HARM = {m.name: "+" if m.direction is Direction.INCREASE else "-" for m in DEFAULT_METRICS}
_TOLERATED = re.compile(r"tolerated ([+-])")
_MENTION_LIMIT = 6


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def metric_value(sample: Mapping[str, Any] | None, name: str) -> float | None:
    """A sample's value of a standard field or an app metric (``metrics``), as the judge
    reads it (``engine.canary_analysis._metric``)."""
    if not sample:
        return None
    v = sample.get(name)
    if v is None:
        m = sample.get("metrics")
        v = m.get(name) if isinstance(m, Mapping) else None
    return _num(v)


def _pre_scale(name: str, pre: Mapping[str, Any] | None) -> float | None:
    v = metric_value(pre, name)
    return v if v is not None and v > 0 else None


# -- data ---------------------------------------------------------------------------------------
_ADJUSTED = "adjusted for the pre-deployment difference"


def _relative(m: Mapping[str, Any], name: str, pres: Sequence[Mapping[str, Any] | None]) -> bool:
    """Whether the judge compared this metric as ratios (module docstring)."""
    given = m.get("relative")
    if isinstance(given, bool):
        return given
    if name in ADDITIVE or _ADJUSTED in str(m.get("reason", "")):
        return False
    return all(_pre_scale(name, p) is not None for p in pres)


def _rows(doc: Mapping[str, Any], pres: Sequence[Mapping[str, Any] | None]) -> list[dict[str, Any]]:
    """The judge's rows, normalised. ``pres``: the before-values of the canary and of every
    control of its pool."""
    rows = []
    for m in doc.get("metrics") or ():
        if not isinstance(m, Mapping) or "name" not in m:
            continue
        name = str(m["name"])
        found = _TOLERATED.search(str(m.get("reason", "")))
        adjusted = m.get("baseline_adjusted")
        rows.append(
            {
                "name": name,
                "verdict": str(m.get("verdict", "?")),
                "critical": bool(m.get("critical")),
                "relative": _relative(m, name, pres),
                "adjusted": (
                    adjusted
                    if isinstance(adjusted, bool)
                    else _ADJUSTED in str(m.get("reason", ""))
                ),
                "harm": found.group(1) if found else _DEFAULT_HARM.get(name, "+"),
                **{
                    k: _num(m.get(k))
                    for k in (
                        "canary_median",
                        "control_median",
                        "effect",
                        "ci_low",
                        "ci_high",
                        "tolerated",
                    )
                },
                "n_canary": int(_num(m.get("n_canary")) or 0),
                "n_control": int(_num(m.get("n_control")) or 0),
                "reason": str(m.get("reason", "")),
            }
        )
    return rows


def deciding_metric(rows: Sequence[Mapping[str, Any]]) -> str | None:
    worst = max(
        (r for r in rows if r["critical"]),
        key=lambda r: _SEVERITY.get(r["verdict"], 0),
        default=None,
    )
    if worst is not None and _SEVERITY.get(worst["verdict"], 0) > 0:
        return str(worst["name"])
    names = [str(r["name"]) for r in rows]
    if "latency_ms" in names:
        return "latency_ms"
    return names[0] if names else None


def soak_round(name: Any) -> bool:
    """A ``soak.*`` round of a canary soak ("soak", "soak-r2", "soak-ext", "soak-r2-ext"), not
    another sampling window of stage 0."""
    return name is None or name == "soak" or str(name).startswith("soak-")


def _median(values: Sequence[float]) -> float | None:
    v = sorted(values)
    return None if not v else (v[len(v) // 2] + v[(len(v) - 1) // 2]) / 2


def _series(
    ticks: Sequence[Mapping[str, Any]],
    name: str,
    devices: Mapping[str, float | None],
) -> tuple[list[tuple[float, float | None]], float | None]:
    """``(t, value)`` over every soak of the round in order — per tick the median over
    ``devices`` (a control pool; one canary), each divided by its scale when it has one — and
    where an extension began."""
    points: list[tuple[float, float | None]] = []
    offset, last_t, seg, split = 0.0, 0.0, None, None
    for tick in ticks:
        rnd = tick.get("round")
        t = _num(tick.get("t")) or 0.0
        if seg is not None and rnd != seg:
            offset += last_t
            if str(rnd).endswith("-ext") and split is None:
                split = offset
        seg, last_t = rnd, t
        samples = tick.get("samples")
        samples = samples if isinstance(samples, Mapping) else {}
        values = []
        for dev, scale in devices.items():
            s = samples.get(dev)
            v = metric_value(s if isinstance(s, Mapping) else None, name)
            if v is not None:
                values.append(v / scale if scale else v)
        points.append((offset + t, _median(values)))
    return points, split


def _sparkline(
    ticks: Sequence[Mapping[str, Any]],
    canary: str,
    pool: Sequence[str],
    row: Mapping[str, Any],
    pres: Mapping[str, Mapping[str, Any] | None],
) -> dict[str, Any] | None:
    name = str(row["name"])
    rel = bool(row["relative"])

    def scales(devs: Sequence[str]) -> dict[str, float | None]:
        return {d: _pre_scale(name, pres.get(d)) if rel else None for d in devs}

    a, split = _series(ticks, name, scales([canary]))
    b, _ = _series(ticks, name, scales(pool))
    ctl, tol = row["control_median"], row["tolerated"]
    limit = None
    if ctl is not None and tol is not None:
        limit = ctl + tol if row["harm"] == "+" else ctl - tol
    what = "relative to each device's value before the soak" if rel else "as measured"
    control = pool[0] if len(pool) == 1 else f"its {len(pool)} pooled controls (median)"
    svg = sparkline_svg(
        a,
        b,
        title=f"{name} on {canary} (solid) and {control} (dashed), {what}; "
        "dotted: the control median plus the tolerated change",
        limit=limit,
        split_at=split,
    )
    if svg is None:
        return None
    return {
        "metric": name,
        "relative": rel,
        "points": sum(v is not None for _, v in a),
        "control_points": sum(v is not None for _, v in b),
        "limit": limit,
        "extended_at_s": split,
        "svg": svg,
    }


def _pools(controls: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Each canary's controls: ``pools`` (several pooled controls), else its one control."""
    c = controls or {}
    pools, chosen = c.get("pools"), c.get("controls")
    out: dict[str, list[str]] = {}
    if isinstance(chosen, Mapping):
        out = {str(k): [str(v)] for k, v in chosen.items() if v}
    if isinstance(pools, Mapping):
        out.update({str(k): [str(d) for d in v] for k, v in pools.items() if isinstance(v, list)})
    return dict(sorted(out.items()))


def round_evidence(
    verdict: Mapping[str, Any] | None,
    ticks: Sequence[Mapping[str, Any]],
    controls: Mapping[str, Any] | None,
    baselines: Mapping[str, Mapping[str, Any] | None],
    confidence: float,
) -> dict[str, Any]:
    """One round's analysis evidence (module docstring). ``ticks``: the round's
    ``soak.sampled`` details in log order (other sampling windows than the soak's are left
    out); ``controls``: the ``canary.controls`` details that chose this round's controls;
    ``baselines``: each canary's ``device.baseline`` sample."""
    v = verdict or {}
    ticks = [t for t in ticks if soak_round(t.get("round"))]
    raw_pre = (controls or {}).get("pre")
    pre: dict[str, Mapping[str, Any] | None] = {
        str(k): p if isinstance(p, Mapping) else None
        for k, p in (raw_pre.items() if isinstance(raw_pre, Mapping) else ())
    }
    pools = _pools(controls)
    analysis = v.get("analysis")
    analysis = analysis if isinstance(analysis, Mapping) else {}
    out = []
    for canary, doc in sorted(analysis.items()):
        if not isinstance(doc, Mapping):
            continue
        control = str(doc.get("control", ""))
        pool = pools.get(canary) or [control]
        pres = {canary: baselines.get(canary), **{d: pre.get(d) for d in pool}}
        rows = _rows(doc, list(pres.values()))
        decided = deciding_metric(rows)
        row = next((r for r in rows if r["name"] == decided), None)
        out.append(
            {
                "canary": canary,
                "control": control,
                "pool": pool,
                "verdict": str(doc.get("verdict", "?")),
                "reasons": [str(x) for x in doc.get("reasons") or ()],
                "metrics": rows,
                "decided_by": decided,
                "sparkline": _sparkline(ticks, canary, pool, row, pres) if row else None,
            }
        )
    without = (controls or {}).get("without")
    return {
        "controls": pools,
        "judge": str(v["judge"]) if v.get("judge") else None,
        "confidence": confidence,
        "notes": [str(x) for x in v.get("notes") or ()],
        "without_control": [str(x) for x in without] if isinstance(without, list) else [],
        "ticks": len(ticks),
        "analysis": out,
    }


# -- the verdict line ---------------------------------------------------------------------------
def _mentions(evidence: Mapping[str, Any], word: str) -> list[str]:
    """``metric on canary (effect [interval], tolerated …)`` for the deciding metrics that made
    the round ``word``, grouped by metric."""
    wanted = {"FAIL": ("FAIL", "NO_DATA"), "INCONCLUSIVE": ("INCONCLUSIVE",)}.get(word, ())
    by_metric: dict[str, list[str]] = {}
    for a in evidence.get("analysis", ()):
        if a["verdict"] != word:
            continue
        for row in a["metrics"]:
            if row["critical"] and row["verdict"] in wanted:
                f = format_row(row)
                if row["verdict"] == "NO_DATA":
                    detail = "no data"
                else:
                    detail = f"{f['effect']}, tolerated {f['tolerated']}"
                by_metric.setdefault(row["name"], []).append(f"{a['canary']} ({detail})")
    out = []
    for name, where in by_metric.items():
        more = f" … (+{len(where) - _MENTION_LIMIT} more)" if len(where) > _MENTION_LIMIT else ""
        out.append(f"{name} on {', '.join(where[:_MENTION_LIMIT])}{more}")
    return out


def verdict_text(
    word: str,
    evidence: Mapping[str, Any],
    *,
    extended: bool,
    decision: Mapping[str, Any] | None,
) -> str:
    """The round's verdict as one line: "INCONCLUSIVE after the extended soak: latency_ms on
    rpi-c-01 (+23.8 % [+22.4, +25.3], tolerated +25.0 %); approved by alice accepting the
    risk". Just the word for a round judged without analysis. ``decision``: the
    ``approval.granted``/``rejected`` that followed this round (``by``, ``action``,
    ``accept_inconclusive``)."""
    analysed = bool(evidence.get("analysis"))
    if not analysed and not extended:
        return word
    text = word + (" after the extended soak" if extended else "")
    what = _mentions(evidence, word)
    if not what and word == "PASS" and analysed:
        what = ["every deciding metric within tolerance of its control"]
    if what:
        text += ": " + "; ".join(what)
    if word == "INCONCLUSIVE":
        if decision is None:
            text += "; waiting for a person to accept the risk or reject"
        elif decision["action"] == "approval.granted":
            accepted = " accepting the risk" if decision.get("accept_inconclusive") else ""
            text += f"; approved by {decision['by']}{accepted}"
        else:
            text += f"; rejected by {decision['by']}"
    return text
