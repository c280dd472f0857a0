"""How the VERIFY section prints one metric row of the canary-vs-control comparison.

``format_row`` takes a row of ``report.canary_evidence`` (raw numbers, ``relative``, ``harm``)
and returns the cells the markdown prints; the JSON document keeps the numbers. A ratio row
(``relative``) prints medians as the change from the device's own before-value ("+23.9 %"),
the effect and its interval as points of that change relative to the control ("+23.8 %
[+22.4, +25.3]"), the tolerance likewise with the harmful direction's sign ("+25.0 %");
``error_rate`` prints medians in percent and changes in percentage points ("+4.80 pp");
latency, CPU, GPU, memory and temperature as measured in their units (ms, % and pts, MB, C);
any other metric (an app's own) as a number to four significant digits. A number not known
reads ``n/a``; an effect without an interval at that confidence says "[no interval]".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Absolute (unscaled) metrics: the unit of a level, the unit of a change.
_UNITS = {
    "latency_ms": (" ms", " ms"),
    "cpu_percent": (" %", " pts"),
    "gpu_percent": (" %", " pts"),
    "mem_used_mb": (" MB", " MB"),
    "temperature_c": (" C", " C"),
}


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x) if math.isfinite(x) else None


def _g(x: float, signed: bool = False) -> str:
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def _level(row: Mapping[str, Any], x: Any) -> str:
    v = _num(x)
    if v is None:
        return "n/a"
    name = row["name"]
    if row["relative"]:
        return f"{100 * (v - 1):+.1f} %"
    if name == "error_rate":
        return f"{100 * v:.2f} %"
    if name == "mem_used_mb":
        return f"{round(v)} MB"
    unit = _UNITS.get(name)
    return f"{v:.1f}{unit[0]}" if unit else _g(v)


def _change(row: Mapping[str, Any], x: Any, sign: bool = True) -> str:
    """A change (effect, interval end, tolerance) without its unit; ``n/a`` when unknown."""
    v = _num(x)
    if v is None:
        return "n/a"
    name = row["name"]
    if row["relative"]:
        return f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"
    if name == "error_rate":
        return f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}"
    if name == "mem_used_mb":
        return f"{round(v):+d}" if sign else f"{round(v):d}"
    if name in _UNITS:
        return f"{v:+.1f}" if sign else f"{v:.1f}"
    return _g(v, signed=sign)


def _change_unit(row: Mapping[str, Any]) -> str:
    name = row["name"]
    if row["relative"]:
        return " %"
    if name == "error_rate":
        return " pp"
    return _UNITS[name][1] if name in _UNITS else ""


def format_row(row: Mapping[str, Any]) -> dict[str, str]:
    """One metric row as the VERIFY table prints it."""
    unit = _change_unit(row)
    effect = _change(row, row["effect"])
    if effect != "n/a":
        if _num(row["ci_low"]) is None or _num(row["ci_high"]) is None:
            effect += f"{unit} [no interval]"
        else:
            low, high = _change(row, row["ci_low"]), _change(row, row["ci_high"])
            effect += f"{unit} [{low}, {high}]"
    tol = _change(row, row["tolerated"], sign=False)
    tolerated = "n/a" if tol == "n/a" else f"{row['harm']}{tol}{unit}"
    verdict = str(row["verdict"])
    return {
        "metric": str(row["name"]),
        "canary": _level(row, row["canary_median"]),
        "control": _level(row, row["control_median"]),
        "effect": effect,
        "tolerated": tolerated,
        "verdict": verdict if row["critical"] else f"{verdict} (not deciding)",
    }
